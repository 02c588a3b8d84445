//! Step 6 of a request: secondary authorization by per-key grants (contract section 11).
//!
//! A grant opens {encrypt, decrypt, metadata} to a principal pattern matched against
//! `awsPrincipalArn`: an exact value, `*` (everyone), or a glob where `*` matches any run of
//! characters (e.g. `arn:aws:iam::111122223333:role/app-*`). A grant may be narrowed by
//! `kmsViaService`, `awsSourceVpc` and `awsSourceVpce` (exact matches). No matching grant means
//! 403 `AccessDeniedException`. Health is never subject to grants (the handler never calls this).

use keyward_keystore::Grant;

use super::model::RequestMetadata;

/// An operation a grant may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Encrypt,
    Decrypt,
    Metadata,
}

/// The index of the first grant that allows `op` for this request, if any.
pub(crate) fn allowed(grants: &[Grant], op: Op, md: &RequestMetadata<'_>) -> Option<usize> {
    let principal = md.aws_principal_arn.as_deref()?;
    grants.iter().position(|g| {
        let opens = match op {
            Op::Encrypt => g.ops.encrypt,
            Op::Decrypt => g.ops.decrypt,
            Op::Metadata => g.ops.metadata,
        };
        opens
            && glob_match(&g.principal, principal)
            && narrows(&g.via_service, md.kms_via_service.as_deref())
            && narrows(&g.source_vpc, md.aws_source_vpc.as_deref())
            && narrows(&g.source_vpce, md.aws_source_vpce.as_deref())
    })
}

fn narrows(want: &Option<String>, got: Option<&str>) -> bool {
    match want {
        None => true,
        Some(w) => got == Some(w.as_str()),
    }
}

/// `*` matches any (possibly empty) run; everything else matches itself. Linear-time greedy
/// matching with one backtrack point, so no input can make it slow.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&tc) = t.get(ti) {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&pc) if pc == tc => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_keystore::GrantOps;

    fn grant(p: &str, via: Option<&str>) -> Grant {
        Grant {
            principal: p.into(),
            ops: GrantOps {
                encrypt: true,
                decrypt: false,
                metadata: true,
            },
            via_service: via.map(Into::into),
            source_vpc: None,
            source_vpce: None,
        }
    }

    fn md<'a>(p: &'a str, via: Option<&'a str>) -> RequestMetadata<'a> {
        RequestMetadata {
            aws_principal_arn: Some(p.into()),
            kms_via_service: via.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match(
            "arn:aws:iam::1:role/app-*",
            "arn:aws:iam::1:role/app-web"
        ));
        assert!(!glob_match(
            "arn:aws:iam::1:role/app-*",
            "arn:aws:iam::1:role/db"
        ));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(!glob_match("*a", &"b".repeat(10_000)));
    }

    #[test]
    fn grants_by_op_principal_and_via_service() {
        let g = vec![
            grant("arn:aws:iam::1:role/app-*", None),
            grant("dynamodb.amazonaws.com", Some("dynamodb")),
        ];
        assert_eq!(
            allowed(&g, Op::Encrypt, &md("arn:aws:iam::1:role/app-x", None)),
            Some(0)
        );
        assert_eq!(
            allowed(&g, Op::Decrypt, &md("arn:aws:iam::1:role/app-x", None)),
            None
        );
        assert_eq!(
            allowed(
                &g,
                Op::Metadata,
                &md("dynamodb.amazonaws.com", Some("dynamodb"))
            ),
            Some(1)
        );
        assert_eq!(
            allowed(&g, Op::Metadata, &md("dynamodb.amazonaws.com", Some("ebs"))),
            None
        );
        assert_eq!(
            allowed(&g, Op::Metadata, &md("dynamodb.amazonaws.com", None)),
            None
        );
        assert_eq!(allowed(&[], Op::Metadata, &md("x", None)), None);
    }
}
