//! Handing PID 1 to the image's own init (`init: "auto"` or a path in boot.json).
//!
//! Only PID 1 can *be* PID 1, so the agent forks once the root is ready and before any thread
//! exists: the parent (PID 1) `execve`s the init, the child carries on as the agent. The agent
//! marks itself a child subreaper so the processes of its exec sessions (and their orphans)
//! are still reaped by it and their exit statuses reach the host; everything else is the
//! init's business. `core.shutdown` still powers off with `reboot(2)` from the agent, which
//! does not need to be PID 1.

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::defaults::DEFAULT_PATH;
use crate::{log_error, log_info};

/// Forks; returns `Ok(())` in the agent child. The parent never returns: it becomes `init`.
pub fn hand_off(init: &Path) -> io::Result<()> {
    let prog = CString::new(init.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "init path contains NUL"))?;
    let env: Vec<CString> = [format!("PATH={DEFAULT_PATH}"), "TERM=linux".into(), "container=kubesandbox".into()]
        .into_iter()
        .filter_map(|s| CString::new(s).ok())
        .collect();
    // SAFETY: no other thread exists yet; both sides continue normally.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: plain syscall; a new session detaches us from the init's job control.
        unsafe { libc::setsid() };
        crate::reaper::become_subreaper();
        log_info!("agent continues as pid {} beside {}", std::process::id(), init.display());
        return Ok(());
    }
    let argv = [prog.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NUL-terminated argv/envp arrays of valid strings.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // The init could not start. PID 1 must not exit (kernel panic): stay a plain reaper so the
    // agent child keeps serving and the host can still see what happened.
    log_error!("exec {}: {}; PID 1 stays a reaper", init.display(), io::Error::last_os_error());
    loop {
        let mut status = 0;
        // SAFETY: valid out-pointer.
        if unsafe { libc::wait(&mut status) } < 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
