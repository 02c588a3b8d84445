#!/usr/bin/env python3
"""Send one XKS request signed by botocore's SigV4Auth, an independent SigV4 signer.

Used by tests/xks_api.rs. Prints the HTTP status on the first line, then the response body.
--skew shifts the signing clock; --tamper changes the body after signing.
"""
import argparse
import datetime
import ssl
import sys
import urllib.error
import urllib.request
from unittest import mock

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--ak", required=True)
    p.add_argument("--sk", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--service", default="kms-xks-proxy")
    p.add_argument("--cafile", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--skew", type=int, default=0)
    p.add_argument("--tamper", action="store_true")
    a = p.parse_args()

    with open(a.body_file, "rb") as f:
        body = f.read()
    req = AWSRequest(method="POST", url=a.url, data=body,
                     headers={"Content-Type": "application/json"})
    now = (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
           + datetime.timedelta(seconds=a.skew))
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=now):
        botocore.auth.SigV4Auth(Credentials(a.ak, a.sk), a.service, a.region).add_auth(req)
    prepared = req.prepare()
    data = prepared.body if isinstance(prepared.body, bytes) else body
    if a.tamper:
        data = data.replace(b"{", b"{ ", 1)  # still valid JSON, different bytes
    headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
    r = urllib.request.Request(a.url, data=data, method="POST", headers=headers)
    ctx = ssl.create_default_context(cafile=a.cafile)
    try:
        with urllib.request.urlopen(r, context=ctx, timeout=10) as resp:
            status, out = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, out = e.code, e.read()
    print(status)
    sys.stdout.write(out.decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
