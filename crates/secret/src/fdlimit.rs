//! The process's file-descriptor budget, split between the listeners so that no listener can
//! starve another, or the key store, audit log, HSM and TPM files, of descriptors.
//!
//! At start, [`raise_nofile`] lifts the soft `RLIMIT_NOFILE` to the hard limit (the systemd
//! unit sets `LimitNOFILE=65536`; the kernel's default soft limit of 1024 is what let held
//! attestation connections exhaust the descriptors). [`FdBudget::current`] then sizes each
//! listener's connection cap from the soft limit:
//!
//! * `reserved`: 128 + 1/16 of the limit, never handed to a listener (stores, audit, logs,
//!   HSM/TPM, epoll, the blocking pool, the embedded KRS of the demo);
//! * `attestation`: 1/64, between 8 and 64 (each answer is rate-limited to about one a second:
//!   more connections buy nothing);
//! * `admin`: 1/128, between 4 and 32 (operators only; mutual TLS);
//! * `xks_overflow`: 1/64, between 8 and 256: connections past the XKS cap that are answered
//!   `429 ThrottlingException` quickly, so KMS retries instead of timing out;
//! * `xks`: the rest, at most [`XKS_MEMORY_CEILING`].
//!
//! The split only ever hands out what the limit holds: with 1024 descriptors XKS gets 792,
//! its overflow 16, attestation 16 and admin 8, and 192 stay reserved.

/// Whatever the descriptor limit, at most this many XKS connections are served at once: an
/// idle TLS connection costs tens of KiB (rustls and hyper buffers, the task), so 16384 of them
/// stay below about 1 GiB. KMS keeps far fewer open.
pub(crate) const XKS_MEMORY_CEILING: usize = 16_384;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
/// Never fails the caller: on error the current limit stays and is returned.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// The soft `RLIMIT_NOFILE` (1024 if it cannot be read).
pub(crate) fn nofile_soft() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Connection caps per listener, from one descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub xks: usize,
    pub xks_overflow: usize,
    pub attestation: usize,
    pub admin: usize,
    pub reserved: usize,
}

impl FdBudget {
    /// The split of `nofile` descriptors (see the module comment).
    pub fn from_limit(nofile: u64) -> Self {
        let n = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .clamp(256, 1 << 24);
        let reserved = 128 + n / 16;
        let attestation = (n / 64).clamp(8, 64);
        let admin = (n / 128).clamp(4, 32);
        let xks_overflow = (n / 64).clamp(8, 256);
        let rest = n.saturating_sub(reserved + attestation + admin + xks_overflow);
        FdBudget {
            xks: rest.clamp(16, XKS_MEMORY_CEILING),
            xks_overflow,
            attestation,
            admin,
            reserved,
        }
    }

    /// The split of the soft limit in force now.
    pub fn current() -> Self {
        Self::from_limit(nofile_soft())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_never_exceeds_the_limit_and_keeps_a_reserve() {
        for n in [256u64, 1024, 4096, 65_536, 1 << 20] {
            let b = FdBudget::from_limit(n);
            let total = b.xks + b.xks_overflow + b.attestation + b.admin + b.reserved;
            assert!(total as u64 <= n, "{n}: {b:?}");
            assert!(b.reserved >= 128 + (n as usize) / 16);
            assert!(b.xks >= 16 && b.xks <= XKS_MEMORY_CEILING);
        }
        assert_eq!(
            FdBudget::from_limit(1024),
            FdBudget {
                xks: 792,
                xks_overflow: 16,
                attestation: 16,
                admin: 8,
                reserved: 192
            }
        );
        assert_eq!(FdBudget::from_limit(65_536).xks, XKS_MEMORY_CEILING);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let now = raise_nofile();
        assert_eq!(now, nofile_soft());
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
