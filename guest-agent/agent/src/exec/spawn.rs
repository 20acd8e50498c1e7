//! Starting a child: everything is prepared in the parent (paths, argv, envp, identity,
//! limits, pty), then `fork`, and the child runs only async-signal-safe syscalls before
//! `execve`. A failure in the child is written as `[stage u8][errno i32]` to a close-on-exec
//! pipe: EOF on that pipe means `execve` succeeded.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ksb_protocol::messages::{ExecFailureKind, ExecRequest, Rlimit};
use tokio::sync::oneshot;

use super::status::{classify, Stage};
use crate::sys::{cvt, errno_name};
use crate::users::Identity;

/// Why a command did not start; becomes `core.exec.failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpawnError {
    pub kind: ExecFailureKind,
    pub stage: Stage,
    pub errno: Option<i32>,
    pub message: String,
}

impl SpawnError {
    pub fn from_errno(stage: Stage, errno: i32, what: &str) -> Self {
        let err = io::Error::from_raw_os_error(errno);
        SpawnError {
            kind: classify(stage, errno),
            stage,
            errno: Some(errno),
            message: format!("{what}: {err} ({})", errno_name(errno)),
        }
    }

    pub fn new(kind: ExecFailureKind, stage: Stage, message: impl Into<String>) -> Self {
        SpawnError { kind, stage, errno: None, message: message.into() }
    }
}

/// Maps a protocol rlimit name (`nofile`, `RLIMIT_NOFILE`, any case) to its resource number.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    let lower = name.to_ascii_lowercase();
    let name = lower.strip_prefix("rlimit_").unwrap_or(&lower);
    Some(match name {
        "cpu" => libc::RLIMIT_CPU,
        "fsize" => libc::RLIMIT_FSIZE,
        "data" => libc::RLIMIT_DATA,
        "stack" => libc::RLIMIT_STACK,
        "core" => libc::RLIMIT_CORE,
        "rss" => libc::RLIMIT_RSS,
        "nproc" => libc::RLIMIT_NPROC,
        "nofile" => libc::RLIMIT_NOFILE,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "as" => libc::RLIMIT_AS,
        "locks" => libc::RLIMIT_LOCKS,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn is_executable_file(path: &Path) -> Result<(), i32> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(libc::EACCES),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(libc::EACCES),
        Ok(_) => Ok(()),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::ENOENT)),
    }
}

/// Finds `cmd` like `execvp` would, but in the parent (the child must not allocate).
/// `root` prefixes the search (tests); a `cmd` containing `/` is used as given.
pub fn resolve_command(cmd: &str, path_var: &str, root: &Path) -> Result<PathBuf, SpawnError> {
    if cmd.is_empty() {
        return Err(SpawnError::new(ExecFailureKind::BadArgs, Stage::Resolve, "empty command"));
    }
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let mut denied = false;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        let on_disk = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match is_executable_file(&on_disk) {
            Ok(()) => return Ok(candidate),
            Err(libc::EACCES) => denied = true,
            Err(_) => {}
        }
    }
    let errno = if denied { libc::EACCES } else { libc::ENOENT };
    let mut e = SpawnError::from_errno(Stage::Resolve, errno, &format!("{cmd}: command not found in PATH={path_var}"));
    if denied {
        e.message = format!("{cmd}: found in PATH={path_var} but not executable");
    }
    Err(e)
}

/// Everything the child needs, prepared before `fork`.
pub struct Prepared {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub identity: Identity,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// `Some((rows, cols))` for a pty.
    pub tty: Option<(u16, u16)>,
}

fn cstr(s: &str, what: &str) -> Result<CString, SpawnError> {
    CString::new(s)
        .map_err(|_| SpawnError::new(ExecFailureKind::BadArgs, Stage::Resolve, format!("{what} contains a NUL byte")))
}

impl Prepared {
    /// `program` is the resolved path; argv, rlimits and the tty come from `req`.
    pub fn new(
        program: &Path,
        req: &ExecRequest,
        env: &[(String, String)],
        cwd: &str,
        identity: Identity,
    ) -> Result<Self, SpawnError> {
        let rlimits: &[Rlimit] = &req.rlimits;
        let tty = req.tty.then_some((req.rows, req.cols));
        let mut argv = vec![cstr(&req.cmd, "command")?];
        for a in &req.args {
            argv.push(cstr(a, "an argument")?);
        }
        let envp =
            env.iter().map(|(k, v)| cstr(&format!("{k}={v}"), "an environment entry")).collect::<Result<_, _>>()?;
        let mut limits = Vec::new();
        for r in rlimits {
            let res = rlimit_resource(&r.resource).ok_or_else(|| {
                SpawnError::new(
                    ExecFailureKind::BadArgs,
                    Stage::Rlimit,
                    format!("unknown rlimit resource {:?}", r.resource),
                )
            })?;
            if r.soft > r.hard {
                return Err(SpawnError::new(
                    ExecFailureKind::BadArgs,
                    Stage::Rlimit,
                    format!("rlimit {}: soft limit {} exceeds hard limit {}", r.resource, r.soft, r.hard),
                ));
            }
            limits.push((res, libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard }));
        }
        Ok(Prepared {
            program: cstr(&program.to_string_lossy(), "the program path")?,
            argv,
            envp,
            cwd: cstr(cwd, "the working directory")?,
            identity,
            rlimits: limits,
            tty,
        })
    }
}

/// The parent's side of a started child.
pub struct Child {
    pub pid: i32,
    /// Write end of stdin (pipes) or a duplicate of the pty master.
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    /// `None` with a pty: everything arrives on stdout.
    pub stderr: Option<OwnedFd>,
    /// A duplicate of the pty master, for resizing.
    pub pty: Option<OwnedFd>,
    pub exit: oneshot::Receiver<libc::c_int>,
}

/// Children by pid, waiting for their exit status. One table per process (not per server):
/// `waitpid(-1)` reaps any child, so whoever reaps must find the waiter here. It is locked
/// across `fork` + insert so a reap can never fall between them.
static CHILDREN: Mutex<Option<HashMap<i32, oneshot::Sender<libc::c_int>>>> = Mutex::new(None);

/// Reaps every exited child (ours or orphans reparented to us) and delivers statuses.
pub fn reap_all() {
    let mut table = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        if let Some(tx) = table.get_or_insert_with(HashMap::new).remove(&pid) {
            let _ = tx.send(status);
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out-array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 just returned these descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

pub fn dup_cloexec(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: valid out-pointers; null name and termios mean defaults.
    cvt(unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) })?;
    // SAFETY: openpty returned these descriptors; we own them.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on descriptors we own.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok((master, slave))
}

/// File descriptors the child arranges as 0, 1, 2.
struct ChildStdio {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The pty slave to make the controlling terminal.
    ctty: Option<RawFd>,
}

/// Runs in the child between `fork` and `execve`: async-signal-safe syscalls only, no
/// allocation, no locks. Never returns.
unsafe fn child_exec(
    p: &Prepared,
    io: &ChildStdio,
    err_fd: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    change_ids: bool,
) -> ! {
    let fail = |stage: Stage| -> ! {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 5];
        msg[0] = stage as u8;
        msg[1..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(err_fd, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(127)
    };
    // The agent ignores SIGPIPE (Rust runtime) and may block signals: a command must start clean.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    if libc::setsid() < 0 {
        fail(Stage::Setsid);
    }
    if let Some(tty) = io.ctty {
        if libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
            fail(Stage::Pty);
        }
    }
    let stage = if io.ctty.is_some() { Stage::Pty } else { Stage::Stdio };
    for (fd, target) in [(io.stdin, 0), (io.stdout, 1), (io.stderr, 2)] {
        if libc::dup2(fd, target) < 0 {
            fail(stage);
        }
    }
    for (res, lim) in &p.rlimits {
        if libc::setrlimit(*res, lim) < 0 {
            fail(Stage::Rlimit);
        }
    }
    if change_ids {
        let groups = &p.identity.groups;
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
            fail(Stage::Groups);
        }
        if libc::setgid(p.identity.gid) < 0 {
            fail(Stage::Gid);
        }
        if libc::setuid(p.identity.uid) < 0 {
            fail(Stage::Uid);
        }
    }
    if libc::chdir(p.cwd.as_ptr()) < 0 {
        fail(Stage::Cwd);
    }
    libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(Stage::Exec)
}

/// Forks and execs `p`. Returns when the child either exec'd or reported its failure.
pub fn spawn(p: &Prepared) -> Result<Child, SpawnError> {
    fn io_err(stage: Stage, what: &'static str) -> impl Fn(io::Error) -> SpawnError {
        move |e| SpawnError::from_errno(stage, e.raw_os_error().unwrap_or(libc::EIO), what)
    }
    let (err_r, err_w) = pipe().map_err(io_err(Stage::Fork, "pipe"))?;

    // Parent ends and child ends of stdio.
    let (parent_in, parent_out, parent_err, pty_dup, child_fds): (
        OwnedFd,
        OwnedFd,
        Option<OwnedFd>,
        Option<OwnedFd>,
        Vec<OwnedFd>,
    );
    let stdio;
    match p.tty {
        Some((rows, cols)) => {
            let (master, slave) = open_pty(rows, cols).map_err(io_err(Stage::Pty, "openpty"))?;
            stdio = ChildStdio {
                stdin: slave.as_raw_fd(),
                stdout: slave.as_raw_fd(),
                stderr: slave.as_raw_fd(),
                ctty: Some(slave.as_raw_fd()),
            };
            parent_in = dup_cloexec(&master).map_err(io_err(Stage::Pty, "dup"))?;
            pty_dup = Some(dup_cloexec(&master).map_err(io_err(Stage::Pty, "dup"))?);
            parent_out = master;
            parent_err = None;
            child_fds = vec![slave];
        }
        None => {
            let (in_r, in_w) = pipe().map_err(io_err(Stage::Stdio, "pipe"))?;
            let (out_r, out_w) = pipe().map_err(io_err(Stage::Stdio, "pipe"))?;
            let (e_r, e_w) = pipe().map_err(io_err(Stage::Stdio, "pipe"))?;
            stdio =
                ChildStdio { stdin: in_r.as_raw_fd(), stdout: out_w.as_raw_fd(), stderr: e_w.as_raw_fd(), ctty: None };
            parent_in = in_w;
            parent_out = out_r;
            parent_err = Some(e_r);
            pty_dup = None;
            child_fds = vec![in_r, out_w, e_w];
        }
    }
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: plain getters.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let change_ids = euid == 0 || p.identity.uid != euid || p.identity.gid != egid;

    let (tx, rx) = oneshot::channel();
    let pid = {
        let mut table = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the child only runs `child_exec`, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { child_exec(p, &stdio, err_w.as_raw_fd(), &argv, &envp, change_ids) }
        }
        if pid < 0 {
            return Err(io_err(Stage::Fork, "fork")(io::Error::last_os_error()));
        }
        table.get_or_insert_with(HashMap::new).insert(pid, tx);
        pid
    };
    drop(child_fds);
    drop(err_w);

    let mut msg = [0u8; 5];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reading into the remaining part of `msg`.
        let n = unsafe { libc::read(err_r.as_raw_fd(), msg[got..].as_mut_ptr() as *mut libc::c_void, msg.len() - got) };
        if n == 0 {
            break;
        }
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        got += n as usize;
    }
    if got == msg.len() {
        let stage = Stage::from_u8(msg[0]);
        let errno = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
        // The child exits with 127 right away; the reaper collects it and nobody listens.
        let what = match stage {
            Stage::Exec => format!("exec {}", p.program.to_string_lossy()),
            Stage::Cwd => format!("working directory {}", p.cwd.to_string_lossy()),
            Stage::Groups | Stage::Gid | Stage::Uid => {
                format!("switch to uid {} gid {}", p.identity.uid, p.identity.gid)
            }
            other => other.as_str().to_string(),
        };
        return Err(SpawnError::from_errno(stage, errno, &what));
    }
    for fd in [Some(&parent_in), Some(&parent_out), parent_err.as_ref(), pty_dup.as_ref()].into_iter().flatten() {
        set_nonblocking(fd).map_err(io_err(Stage::Stdio, "nonblocking"))?;
    }
    Ok(Child { pid, stdin: parent_in, stdout: parent_out, stderr: parent_err, pty: pty_dup, exit: rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_names() {
        assert_eq!(rlimit_resource("nofile"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_AS"), Some(libc::RLIMIT_AS));
        assert_eq!(rlimit_resource("bogus"), None);
    }

    #[test]
    fn resolves_commands_on_path() {
        assert_eq!(resolve_command("sh", "/nonexistent:/bin", Path::new("/")).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(resolve_command("./x", "", Path::new("/")).unwrap(), PathBuf::from("./x"));
        let e = resolve_command("definitely-not-here", "/bin:/usr/bin", Path::new("/")).unwrap_err();
        assert_eq!(e.kind, ExecFailureKind::NotFound);
        assert!(e.message.contains("definitely-not-here"), "{}", e.message);
        assert_eq!(resolve_command("", "/bin", Path::new("/")).unwrap_err().kind, ExecFailureKind::BadArgs);
    }

    #[test]
    fn non_executable_file_on_path_is_permission_denied() {
        let dir = std::env::temp_dir().join(format!("ksb-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
        let e = resolve_command("tool", dir.to_str().unwrap(), Path::new("/")).unwrap_err();
        assert_eq!(e.kind, ExecFailureKind::PermissionDenied);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
