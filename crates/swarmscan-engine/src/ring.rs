//! io_uring setup and kernel feature probe.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// Opcodes the engine relies on, with the kernel that introduced them.
const REQUIRED_OPCODES: &[(u8, &str, &str)] = &[
    (opcode::Socket::CODE, "IORING_OP_SOCKET", "5.19"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT", "5.5"),
    (opcode::LinkTimeout::CODE, "IORING_OP_LINK_TIMEOUT", "5.5"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::Recv::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Accept::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::Close::CODE, "IORING_OP_CLOSE", "5.6"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
];

/// What the ring was built with.
#[derive(Debug, Clone, Copy, Default)]
pub struct RingFlags {
    /// IORING_SETUP_SINGLE_ISSUER was accepted.
    pub single_issuer: bool,
    /// IORING_SETUP_DEFER_TASKRUN was accepted.
    pub defer_taskrun: bool,
    /// IORING_SETUP_COOP_TASKRUN was accepted.
    pub coop_taskrun: bool,
}

/// Builds a ring with `entries` SQEs and `4 × entries` CQEs, trying the cheapest task-run
/// modes first and falling back when the kernel says EINVAL.
pub fn build_ring(entries: u32) -> io::Result<(IoUring, RingFlags)> {
    let attempts = [
        RingFlags {
            single_issuer: true,
            defer_taskrun: true,
            coop_taskrun: false,
        },
        RingFlags {
            single_issuer: true,
            defer_taskrun: false,
            coop_taskrun: true,
        },
        RingFlags {
            single_issuer: false,
            defer_taskrun: false,
            coop_taskrun: true,
        },
        RingFlags::default(),
    ];
    let mut last_err = None;
    for flags in attempts {
        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(entries.saturating_mul(4))
            .setup_submit_all();
        if flags.single_issuer {
            builder.setup_single_issuer();
        }
        if flags.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        if flags.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        match builder.build(entries) {
            Ok(ring) => {
                check_kernel(&ring)?;
                return Ok((ring, flags));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
            Err(e) => return Err(explain_setup_error(e)),
        }
    }
    Err(explain_setup_error(last_err.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

fn explain_setup_error(e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (kernel without io_uring)",
        Some(libc::EPERM) => {
            " (io_uring disabled: check sysctl kernel.io_uring_disabled or seccomp)"
        }
        Some(libc::ENOMEM) => " (locked memory limit too low: raise RLIMIT_MEMLOCK)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("io_uring setup failed: {e}{hint}"))
}

/// Refuses to run when an opcode or feature the engine relies on is missing.
pub fn check_kernel(ring: &IoUring) -> io::Result<()> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring: opcode probe failed (needs Linux ≥ 5.6): {e}"),
        )
    })?;
    for &(code, name, version) in REQUIRED_OPCODES {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring: kernel lacks {name} (needs Linux ≥ {version})"),
            ));
        }
    }
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring: kernel lacks IORING_FEAT_EXT_ARG (wait with timeout; needs Linux ≥ 5.11)",
        ));
    }
    if !params.is_feature_nodrop() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring: kernel lacks IORING_FEAT_NODROP (needs Linux ≥ 5.5)",
        ));
    }
    Ok(())
}

/// The running kernel's release string (e.g. "6.18.44").
pub fn kernel_release() -> String {
    // Safety: utsname is POD; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // Safety: valid pointer to a utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_builds_with_modern_flags_on_this_kernel() {
        let (ring, flags) = build_ring(64).expect("this machine's kernel supports the engine");
        assert!(ring.params().sq_entries() >= 64);
        // Kernel 6.1+ accepts single issuer + defer task-run; we target ≥ 6.1.
        assert!(flags.single_issuer && flags.defer_taskrun, "{flags:?}");
        assert!(!kernel_release().is_empty());
    }
}
