#!/usr/bin/env python3
"""Black-box XKS conformance driver for tests/xks_conformance.rs.

Reads the `keyward demo` JSON line (argv[1] = file holding it), argv[2] = keyward binary.
Signs with botocore's SigV4Auth (an independent signer) and sends real HTTPS requests.
Prints one line per case: `PASS name` or `FAIL name: detail`. Exit code is always 0;
the Rust test asserts on the lines.
"""
import base64
import datetime
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
from unittest import mock

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

DEMO = json.load(open(sys.argv[1]))
KEYWARD = sys.argv[2]
U = urllib.parse.urlparse(DEMO["url"])
HOST, PORT = U.hostname, U.port
PREFIX = DEMO["uri_prefix"]
BASE = PREFIX + "/kms/xks/v1"
AK, SK, REGION = DEMO["access_key_id"], DEMO["secret_access_key"], DEMO["region"]
KEY = DEMO["key_ids"][0]
CTX = ssl.create_default_context(cafile=DEMO["ca_cert"])
RESULTS = []
SECRETS_SENT = []


def b64(b):
    return base64.b64encode(b).decode()


def check(name, cond, detail=""):
    RESULTS.append(name)
    print(("PASS %s" % name) if cond else ("FAIL %s: %s" % (name, detail)), flush=True)


def sign(method, path, body, ak=AK, sk=SK, region=REGION, service="kms-xks-proxy", skew=0):
    url = "https://%s:%d%s" % (HOST, PORT, path)
    req = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    now = (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
           + datetime.timedelta(seconds=skew))
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=now):
        botocore.auth.SigV4Auth(Credentials(ak, sk), service, region).add_auth(req)
    return {k: v for k, v in req.headers.items()}


def send(method, path, body=b"", headers=None, conn=None):
    own = conn is None
    if own:
        conn = http.client.HTTPSConnection(HOST, PORT, context=CTX, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, data, r.getheader("Content-Type") or ""
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        return -1, repr(e).encode(), ""
    finally:
        if own:
            conn.close()


def call(path, obj=None, raw=None, method="POST", tamper=False, **kw):
    body = raw if raw is not None else json.dumps(obj).encode()
    h = sign(method, path, body, **kw)
    if tamper:
        body = body.replace(b"{", b"{ ", 1)
    return send(method, path, body, h)


def js(data):
    try:
        return json.loads(data)
    except ValueError:
        return None


def md(op="Encrypt", principal="arn:aws:iam::111122223333:user/audit", **extra):
    m = {"awsPrincipalArn": principal, "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k",
         "kmsOperation": op, "kmsRequestId": "req-1"}
    m.update(extra)
    return m


def kpath(key, op):
    return "%s/keys/%s/%s" % (BASE, key, op)


def expect_err(name, resp, status, err):
    st, data, ctype = resp
    j = js(data)
    ok = st == status and isinstance(j, dict) and j.get("errorName") == err
    msg = j.get("errorMessage", "") if isinstance(j, dict) else ""
    ok = ok and isinstance(msg, str) and len(msg) < 512 and all(0x20 <= ord(c) <= 0x7E for c in msg)
    ok = ok and "application/json" in ctype
    check(name, ok, "want %d %s, got %d %r ctype=%r" % (status, err, st, data[:200], ctype))


def admin(*args):
    p = subprocess.run([KEYWARD, "admin", "--profile", DEMO["admin_profile"]] + list(args),
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def encrypt(key=KEY, pt=b"hello", aad=None, cdiv=False, principal="arn:aws:iam::111122223333:user/audit", **mdx):
    o = {"requestMetadata": md("Encrypt", principal, **mdx), "plaintext": b64(pt), "encryptionAlgorithm": "AES_GCM"}
    if aad is not None:
        o["additionalAuthenticatedData"] = b64(aad)
    if cdiv:
        o["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return call(kpath(key, "encrypt"), o)


def dec_body(e, aad=None, principal="arn:aws:iam::111122223333:user/audit", **mdx):
    o = {"requestMetadata": md("Decrypt", principal, **mdx), "encryptionAlgorithm": "AES_GCM",
         "ciphertext": e["ciphertext"], "initializationVector": e["initializationVector"],
         "authenticationTag": e["authenticationTag"]}
    if "ciphertextMetadata" in e:
        o["ciphertextMetadata"] = e["ciphertextMetadata"]
    if aad is not None:
        o["additionalAuthenticatedData"] = b64(aad)
    return o


def flip(s):
    b = bytearray(base64.b64decode(s))
    b[0] ^= 1
    return b64(bytes(b))


def main():
    # ---- metadata
    st, d, ct = call(kpath(KEY, "metadata"), {"requestMetadata": md("CreateKey")})
    j = js(d) or {}
    check("metadata_ok", st == 200 and j.get("keySpec") == "AES_256" and "ENCRYPT" in j.get("keyUsage", [])
          and "DECRYPT" in j.get("keyUsage", []) and j.get("keyStatus") == "ENABLED"
          and len(j.get("keyUsage", [])) <= 10 and "application/json" in ct, "%d %r %r" % (st, d, ct))

    # ---- encrypt + CDIV + decrypt round trip
    pt, aad = os.urandom(37), b"project=nile,department=marketing"
    SECRETS_SENT.extend([pt, aad])
    st, d, ct = encrypt(pt=pt, aad=aad, cdiv=True)
    e = js(d) or {}
    try:
        c, iv, tag = (base64.b64decode(e[k], validate=True) for k in ("ciphertext", "initializationVector", "authenticationTag"))
        ctm = base64.b64decode(e.get("ciphertextMetadata", ""), validate=True)
        want = b64(hashlib.sha256(aad + ctm + iv + c + tag).digest())
        ok = st == 200 and len(c) == len(pt) and len(iv) == 12 and len(tag) == 16 and len(ctm) <= 20
        check("encrypt_fields", ok, "%d %r" % (st, d))
        check("encrypt_cdiv_value", e.get("ciphertextDataIntegrityValue") == want, "%r vs %r" % (e.get("ciphertextDataIntegrityValue"), want))
    except (KeyError, ValueError) as ex:
        check("encrypt_fields", False, "%d %r %r" % (st, d, ex))
        check("encrypt_cdiv_value", False, "no encrypt")
    st, d, _ = call(kpath(KEY, "decrypt"), dec_body(e, aad))
    check("decrypt_roundtrip", st == 200 and (js(d) or {}).get("plaintext") == b64(pt), "%d %r" % (st, d))
    st, d, _ = encrypt(pt=b"x")
    check("encrypt_no_cdiv_omits_value", st == 200 and "ciphertextDataIntegrityValue" not in (js(d) or {}), "%d %r" % (st, d))

    # ---- altered inputs -> InvalidCiphertextException
    for f in ("ciphertext", "authenticationTag", "initializationVector", "ciphertextMetadata"):
        if f in e:
            b = dec_body(e, aad)
            b[f] = flip(b[f])
            expect_err("decrypt_altered_" + f, call(kpath(KEY, "decrypt"), b), 400, "InvalidCiphertextException")
    expect_err("decrypt_altered_aad", call(kpath(KEY, "decrypt"), dec_body(e, aad + b"x")), 400, "InvalidCiphertextException")
    b = dec_body(e, aad)
    b.pop("ciphertextMetadata", None)
    expect_err("decrypt_ctm_removed", call(kpath(KEY, "decrypt"), b), 400, "InvalidCiphertextException")

    # ---- health
    st, d, ct = call(BASE + "/health", {"requestMetadata": {"kmsRequestId": "h1", "kmsOperation": "KmsHealthCheck"}})
    j = js(d) or {}
    fl = j.get("ekmFleetDetails", [])
    ok = (st == 200 and isinstance(j.get("xksProxyFleetSize"), int) and j["xksProxyFleetSize"] > 0
          and j.get("xksProxyVendor") and j.get("ekmVendor") and any(ch.isdigit() for ch in j.get("xksProxyModel", ""))
          and 1 <= len(fl) <= 10 and all(x.get("id") and x.get("model") and x.get("healthStatus") in ("ACTIVE", "DEGRADED", "UNAVAILABLE") for x in fl))
    check("health_ok", ok, "%d %r" % (st, d))
    expect_err("health_empty_metadata", call(BASE + "/health", {"requestMetadata": {}}), 400, "ValidationException")

    # ---- ValidationException
    E = kpath(KEY, "encrypt")
    D = kpath(KEY, "decrypt")
    good = {"requestMetadata": md(), "plaintext": b64(b"abcd"), "encryptionAlgorithm": "AES_GCM"}
    expect_err("val_bad_json", call(E, raw=b"{not json"), 400, "ValidationException")
    expect_err("val_missing_metadata", call(E, {k: v for k, v in good.items() if k != "requestMetadata"}), 400, "ValidationException")
    expect_err("val_missing_plaintext", call(E, {k: v for k, v in good.items() if k != "plaintext"}), 400, "ValidationException")
    expect_err("val_metadata_missing_principal", call(kpath(KEY, "metadata"), {"requestMetadata": {"kmsOperation": "CreateKey", "kmsRequestId": "r"}}), 400, "ValidationException")
    for nm, val in (("urlsafe", "-_-_"), ("nopad", "YWJjZA"), ("garbage", "!!!!"), ("whitespace", "YWJj ZA==")):
        expect_err("val_b64_" + nm, call(E, dict(good, plaintext=val)), 400, "ValidationException")
    expect_err("val_wrong_alg", call(E, dict(good, encryptionAlgorithm="AES_CBC")), 400, "ValidationException")
    expect_err("val_wrong_cdiv_alg", call(E, dict(good, ciphertextDataIntegrityValueAlgorithm="SHA_1")), 400, "ValidationException")
    b = dec_body(e, aad)
    expect_err("val_iv_11", call(D, dict(b, initializationVector=b64(os.urandom(11)))), 400, "ValidationException")
    expect_err("val_tag_15", call(D, dict(b, authenticationTag=b64(os.urandom(15)))), 400, "ValidationException")
    expect_err("val_ctm_21", call(D, dict(b, ciphertextMetadata=b64(os.urandom(21)))), 400, "ValidationException")
    d2 = dict(b)
    d2.pop("initializationVector")
    expect_err("val_decrypt_missing_iv", call(D, d2), 400, "ValidationException")

    expect_err("decrypt_iv_16_is_ciphertext_error", call(D, dict(b, initializationVector=b64(os.urandom(16)))), 400, "InvalidCiphertextException")
    d3 = dict(b)
    d3.pop("encryptionAlgorithm")
    expect_err("val_decrypt_missing_alg", call(D, d3), 400, "ValidationException")
    expect_err("val_metadata_empty_md", call(kpath(KEY, "metadata"), {"requestMetadata": {}}), 400, "ValidationException")
    expect_err("val_health_no_md", call(BASE + "/health", {}), 400, "ValidationException")
    expect_err("val_plaintext_null", call(E, dict(good, plaintext=None)), 400, "ValidationException")
    expect_err("val_body_array", call(E, raw=b"[]"), 400, "ValidationException")
    expect_err("val_empty_body", call(E, raw=b""), 400, "ValidationException")
    expect_err("val_aad_urlsafe", call(E, dict(good, additionalAuthenticatedData="-_-_")), 400, "ValidationException")
    expect_err("path_key_dotdot", call(kpath("..", "metadata"), {"requestMetadata": md()}), 404, "InvalidUriPathException")
    # ---- forward compatibility and sizes
    st, d, _ = call(E, dict(good, futureField=1, requestMetadata=md("SomeFutureOp", SourceIdentity="x", kmsRequestId="not a uuid ;-) \u00e9")))
    check("accept_unknown_fields_op_reqid", st == 200, "%d %r" % (st, d))
    st, d, _ = call(E, dict(good, requestMetadata=md(kmsKeyArn="arn:aws:kms:us-east-1:1:key/" + "a" * (2048 - 28), principal="arn:aws:iam::1:role/" + "r" * (2048 - 20))))
    check("accept_arn_2048", st == 200, "%d %r" % (st, d))
    big_pt, big_aad = os.urandom(4300), os.urandom(8192)
    st, d, _ = encrypt(pt=big_pt, aad=big_aad)
    j = js(d) or {}
    check("accept_4300_pt_8192_aad", st == 200, "%d %r" % (st, d[:200]))
    if st == 200:
        st, d, _ = call(D, dec_body(j, big_aad))
        check("decrypt_4300", st == 200 and (js(d) or {}).get("plaintext") == b64(big_pt), "%d" % st)
    expect_err("oversize_100k", encrypt(pt=os.urandom(100 * 1024)), 501, "UnsupportedOperationException")
    big = json.dumps(dict(good, plaintext=b64(os.urandom(3 * 1024 * 1024 * 3 // 4)))).encode()
    expect_err("oversize_3mb_body", call(E, raw=big), 501, "UnsupportedOperationException")

    # ---- not found / path
    expect_err("key_not_found", call(kpath("no-such-key", "metadata"), {"requestMetadata": md("CreateKey")}), 404, "KeyNotFoundException")
    expect_err("path_unknown_prefix", call("/nope/kms/xks/v1/health", {"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "x"}}), 404, "InvalidUriPathException")
    expect_err("path_unknown_op", call(kpath(KEY, "sign"), {"requestMetadata": md()}), 404, "InvalidUriPathException")
    expect_err("path_unknown_version", call(PREFIX + "/kms/xks/v2/health", {"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "x"}}), 404, "InvalidUriPathException")
    expect_err("path_key_dot", call(kpath(".", "metadata"), {"requestMetadata": md()}), 404, "InvalidUriPathException")
    expect_err("path_key_badchar", call(kpath("a%2Fb", "metadata"), {"requestMetadata": md()}), 404, "InvalidUriPathException")
    expect_err("path_key_nonascii", call(kpath("%C3%A9%0A", "metadata"), {"requestMetadata": md()}), 404, "InvalidUriPathException")
    expect_err("path_key_129", call(kpath("k" * 129, "metadata"), {"requestMetadata": md()}), 404, "InvalidUriPathException")
    expect_err("path_query_string", call(BASE + "/health?x=1", {"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "x"}}), 404, "InvalidUriPathException")

    # ---- 405 on known paths, unsigned and signed
    for p in (kpath(KEY, "metadata"), kpath(KEY, "encrypt"), kpath(KEY, "decrypt"), BASE + "/health"):
        for m in ("GET", "PUT"):
            st, d, _ = send(m, p)
            check("m405_unsigned_%s_%s" % (m, p.rsplit("/", 1)[1]), st == 405, "%d %r" % (st, d))
    st, d, _ = call(BASE + "/health", raw=b"", method="GET")
    check("m405_signed_GET_health", st == 405, "%d %r" % (st, d))

    # ---- authentication
    H = BASE + "/health"
    hb = {"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "KmsHealthCheck"}}
    expect_err("auth_none", send("POST", H, json.dumps(hb).encode(), {"Content-Type": "application/json"}), 401, "AuthenticationFailedException")
    expect_err("auth_bad_sig", call(H, hb, sk=SK[:-2] + ("AA" if SK[-2:] != "AA" else "BB")), 401, "AuthenticationFailedException")
    expect_err("auth_wrong_region", call(H, hb, region="eu-west-1"), 401, "AuthenticationFailedException")
    expect_err("auth_wrong_service", call(H, hb, service="kms"), 401, "AuthenticationFailedException")
    expect_err("auth_unknown_ak", call(H, hb, ak="AAAAAAAAAAAAAAAAAAAAAAAA"), 401, "AuthenticationFailedException")
    expect_err("auth_skew_plus_6min", call(H, hb, skew=360), 401, "AuthenticationFailedException")
    expect_err("auth_skew_minus_6min", call(H, hb, skew=-360), 401, "AuthenticationFailedException")
    st, d, _ = call(H, hb, skew=240)
    check("auth_skew_4min_ok", st == 200, "%d %r" % (st, d))
    expect_err("auth_body_tampered", call(H, hb, tamper=True), 401, "AuthenticationFailedException")

    # SignedHeaders must include host (a valid signature over a canonical request without it)
    class NoHost(botocore.auth.SigV4Auth):
        def headers_to_sign(self, request):
            hs = super().headers_to_sign(request)
            del hs["host"]
            return hs
    hbody = json.dumps(hb).encode()
    req = AWSRequest(method="POST", url="https://%s:%d%s" % (HOST, PORT, H), data=hbody, headers={"Content-Type": "application/json"})
    NoHost(Credentials(AK, SK), "kms-xks-proxy", REGION).add_auth(req)
    expect_err("auth_host_not_signed", send("POST", H, hbody, dict(req.headers.items())), 401, "AuthenticationFailedException")

    # ---- keep-alive: two requests on one connection
    conn = http.client.HTTPSConnection(HOST, PORT, context=CTX, timeout=15)
    body = json.dumps(hb).encode()
    r1 = send("POST", H, body, sign("POST", H, body), conn=conn)
    sock1 = conn.sock
    r2 = send("POST", H, body, sign("POST", H, body), conn=conn)
    check("keepalive_same_conn", r1[0] == 200 and r2[0] == 200 and conn.sock is sock1 and sock1 is not None, "%r %r" % (r1[0], r2[0]))
    conn.close()

    # ---- TLS versions
    for nm, v in (("tls12", ssl.TLSVersion.TLSv1_2), ("tls13", ssl.TLSVersion.TLSv1_3)):
        c = ssl.create_default_context(cafile=DEMO["ca_cert"])
        c.minimum_version = c.maximum_version = v
        try:
            with socket.create_connection((HOST, PORT), timeout=5) as s, c.wrap_socket(s, server_hostname=HOST) as t:
                got = t.version()
            check("tls_" + nm, got == {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}[nm], got)
        except (ssl.SSLError, OSError) as ex:
            check("tls_" + nm, False, repr(ex))

    # ---- liveness
    st, d, _ = send("GET", "/ping")
    check("ping_unauth_ok", st == 200 and len(d) < 64 and b"key" not in d.lower(), "%d %r" % (st, d))

    # ---- key states, usages, grants (admin CLI)
    P = "arn:aws:iam::111122223333:role/app-7"
    rc, out = admin("keys", "create", "aud-nogrant")
    check("admin_create", rc == 0, out)
    expect_err("grant_deny_default", call(kpath("aud-nogrant", "metadata"), {"requestMetadata": md("CreateKey", P)}), 403, "AccessDeniedException")
    rc, out = admin("keys", "grant", "aud-nogrant", "--principal", "arn:aws:iam::111122223333:role/app-*", "--ops", "encrypt,metadata")
    check("admin_grant_glob", rc == 0, out)
    st, d, _ = call(kpath("aud-nogrant", "metadata"), {"requestMetadata": md("CreateKey", P)})
    check("grant_glob_allows", st == 200, "%d %r" % (st, d))
    st, d, _ = encrypt("aud-nogrant", principal=P)
    check("grant_glob_allows_encrypt", st == 200, "%d %r" % (st, d))
    if st == 200:
        expect_err("grant_op_not_granted_decrypt", call(kpath("aud-nogrant", "decrypt"), dec_body(js(d), principal=P)), 403, "AccessDeniedException")
    expect_err("grant_glob_denies_other", encrypt("aud-nogrant", principal="arn:aws:iam::111122223333:role/web-1"), 403, "AccessDeniedException")
    rc, out = admin("keys", "grant", "aud-nogrant", "--principal", "*", "--ops", "encrypt", "--via-service", "dynamodb.amazonaws.com")
    check("admin_grant_via", rc == 0, out)
    st, d, _ = encrypt("aud-nogrant", principal="arn:aws:iam::9:user/x", kmsViaService="dynamodb.amazonaws.com")
    check("grant_via_allows", st == 200, "%d %r" % (st, d))
    expect_err("grant_via_denies_other_service", encrypt("aud-nogrant", principal="arn:aws:iam::9:user/x", kmsViaService="ebs"), 403, "AccessDeniedException")
    expect_err("grant_via_denies_absent", encrypt("aud-nogrant", principal="arn:aws:iam::9:user/x"), 403, "AccessDeniedException")

    for kid, usage in (("aud-enc", "encrypt"), ("aud-dec", "decrypt"), ("aud-none", "none")):
        admin("keys", "create", kid, "--usage", usage)
        admin("keys", "grant", kid, "--principal", "*", "--ops", "encrypt,decrypt,metadata")
    st, d, _ = encrypt("aud-enc")
    check("usage_enc_only_encrypts", st == 200, "%d %r" % (st, d))
    expect_err("usage_enc_only_cdiv", encrypt("aud-enc", cdiv=True), 400, "InvalidKeyUsageException")
    if st == 200:
        expect_err("usage_enc_only_decrypt", call(kpath("aud-enc", "decrypt"), dec_body(js(d))), 400, "InvalidKeyUsageException")
    expect_err("usage_dec_only_encrypt", encrypt("aud-dec"), 400, "InvalidKeyUsageException")
    expect_err("usage_none_encrypt", encrypt("aud-none"), 400, "InvalidKeyUsageException")
    st, d, _ = call(kpath("aud-enc", "metadata"), {"requestMetadata": md("CreateKey")})
    check("usage_enc_only_metadata", st == 200 and (js(d) or {}).get("keyUsage") == ["ENCRYPT"], "%d %r" % (st, d))

    rc, out = admin("keys", "disable", KEY)
    check("admin_disable", rc == 0, out)
    st, d, _ = call(kpath(KEY, "metadata"), {"requestMetadata": md("CreateKey")})
    check("disabled_metadata", st == 200 and (js(d) or {}).get("keyStatus") == "DISABLED", "%d %r" % (st, d))
    expect_err("disabled_encrypt", encrypt(), 400, "InvalidStateException")
    expect_err("disabled_decrypt", call(D, dec_body(e, aad)), 400, "InvalidStateException")
    admin("keys", "enable", KEY)
    st, d, _ = encrypt()
    check("reenabled_encrypt", st == 200, "%d %r" % (st, d))

    # ---- credential rotation without restart
    new_ak = "AUDITROTATE234567ABCDEFGH"
    new_sk = b64(os.urandom(33))
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(new_sk)
    rc, out = admin("creds", "add", "--access-key-id", new_ak, "--secret-file", f.name)
    os.unlink(f.name)
    check("creds_add", rc == 0, out)
    st, d, _ = call(H, hb, ak=new_ak, sk=new_sk)
    check("creds_new_works", st == 200, "%d %r" % (st, d))
    rc, out = admin("creds", "remove", AK)
    check("creds_remove_old", rc == 0, out)
    expect_err("creds_old_refused", call(H, hb), 401, "AuthenticationFailedException")
    st, d, _ = call(H, hb, ak=new_ak, sk=new_sk)
    check("creds_new_still_works", st == 200, "%d %r" % (st, d))

    # ---- audit log holds nothing secret we sent
    audit = os.path.join(os.path.dirname(DEMO["admin_profile"]), "audit.jsonl")
    try:
        log = open(audit, "rb").read()
    except OSError as ex:
        check("audit_log_exists", False, repr(ex))
        return
    check("audit_log_exists", len(log) > 0 and b"req-1" in log, "%d bytes" % len(log))
    leaks = [s for s in SECRETS_SENT + [SK.encode(), new_sk.encode()]
             if s in log or b64(s).encode() in log if isinstance(s, bytes)]
    check("audit_no_secrets", not leaks and b64(pt).encode() not in log and b64(aad).encode() not in log and e.get("ciphertext", "zz").encode() not in log, "leaked %d values" % len(leaks))


if __name__ == "__main__":
    main()
    print("DONE %d" % len(RESULTS))
