//! How a child's fate becomes protocol data: the exit-code rule and the errno classification.

use ksb_protocol::messages::ExecFailureKind;

/// The one exit-code rule: a normal exit reports its status, a death by signal N reports
/// `128 + N` (what shells print for `$?`). `status` is a raw `waitpid` status.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        // Stopped/continued are not final; callers only pass final statuses. Be total anyway.
        128
    }
}

/// Where in the spawn sequence a failure happened; reported as `stage` in `core.exec.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Resolve = 1,
    Fork,
    Pty,
    Setsid,
    Stdio,
    Rlimit,
    Groups,
    Gid,
    Uid,
    Cwd,
    Exec,
    User,
}

impl Stage {
    pub fn from_u8(v: u8) -> Stage {
        match v {
            1 => Stage::Resolve,
            2 => Stage::Fork,
            3 => Stage::Pty,
            4 => Stage::Setsid,
            5 => Stage::Stdio,
            6 => Stage::Rlimit,
            7 => Stage::Groups,
            8 => Stage::Gid,
            9 => Stage::Uid,
            10 => Stage::Cwd,
            11 => Stage::Exec,
            _ => Stage::User,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Resolve => "resolve",
            Stage::Fork => "fork",
            Stage::Pty => "pty",
            Stage::Setsid => "setsid",
            Stage::Stdio => "stdio",
            Stage::Rlimit => "rlimit",
            Stage::Groups => "setgroups",
            Stage::Gid => "setgid",
            Stage::Uid => "setuid",
            Stage::Cwd => "chdir",
            Stage::Exec => "exec",
            Stage::User => "user",
        }
    }
}

/// Classifies a spawn failure by stage and errno into the protocol's failure kinds.
pub fn classify(stage: Stage, errno: i32) -> ExecFailureKind {
    use ExecFailureKind::*;
    match (stage, errno) {
        (_, libc::ENOMEM) => OutOfMemory,
        (Stage::Cwd, _) => BadCwd,
        (Stage::Pty | Stage::Setsid, _) => PtySetupFailed,
        (Stage::Groups | Stage::Gid | Stage::Uid | Stage::User, _) => UserSetupFailed,
        (Stage::Rlimit, libc::EPERM) => PermissionDenied,
        (Stage::Rlimit, _) => ResourceLimit,
        (_, libc::EAGAIN | libc::EMFILE | libc::ENFILE) => ResourceLimit,
        (Stage::Exec | Stage::Resolve, libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => NotFound,
        (Stage::Exec | Stage::Resolve, libc::EACCES | libc::EPERM) => PermissionDenied,
        (Stage::Exec | Stage::Resolve, libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY | libc::ELIBBAD) => NotExecutable,
        (Stage::Exec | Stage::Resolve, libc::E2BIG | libc::EINVAL | libc::EFAULT) => BadArgs,
        _ => Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecFailureKind::*;

    fn exited(code: i32) -> i32 {
        (code & 0xff) << 8
    }

    #[test]
    fn normal_exit_reports_the_status() {
        assert_eq!(exit_code(exited(0)), 0);
        assert_eq!(exit_code(exited(3)), 3);
        assert_eq!(exit_code(exited(255)), 255);
    }

    #[test]
    fn death_by_signal_reports_128_plus_signal() {
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(libc::SIGSEGV | 0x80), 139, "core dump bit does not matter");
    }

    #[test]
    fn exec_errnos_map_to_kinds() {
        assert_eq!(classify(Stage::Exec, libc::ENOENT), NotFound);
        assert_eq!(classify(Stage::Resolve, libc::ENOENT), NotFound);
        assert_eq!(classify(Stage::Exec, libc::EACCES), PermissionDenied);
        assert_eq!(classify(Stage::Exec, libc::ENOEXEC), NotExecutable);
        assert_eq!(classify(Stage::Exec, libc::E2BIG), BadArgs);
        assert_eq!(classify(Stage::Exec, libc::ENOMEM), OutOfMemory);
        assert_eq!(classify(Stage::Fork, libc::EAGAIN), ResourceLimit);
        assert_eq!(classify(Stage::Exec, libc::EIO), Other);
    }

    #[test]
    fn setup_stages_map_to_their_kinds_whatever_the_errno() {
        assert_eq!(classify(Stage::Cwd, libc::ENOENT), BadCwd);
        assert_eq!(classify(Stage::Uid, libc::EPERM), UserSetupFailed);
        assert_eq!(classify(Stage::Groups, libc::EINVAL), UserSetupFailed);
        assert_eq!(classify(Stage::Pty, libc::ENOTTY), PtySetupFailed);
        assert_eq!(classify(Stage::Rlimit, libc::EINVAL), ResourceLimit);
        assert_eq!(classify(Stage::Rlimit, libc::EPERM), PermissionDenied);
    }

    #[test]
    fn stage_codes_round_trip() {
        for s in [
            Stage::Resolve,
            Stage::Fork,
            Stage::Pty,
            Stage::Setsid,
            Stage::Stdio,
            Stage::Rlimit,
            Stage::Groups,
            Stage::Gid,
            Stage::Uid,
            Stage::Cwd,
            Stage::Exec,
        ] {
            assert_eq!(Stage::from_u8(s as u8), s);
        }
    }
}
