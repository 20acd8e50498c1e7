//! Thin, safe wrappers over the few raw syscalls the agent needs that std does not offer.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Nanoseconds of `CLOCK_BOOTTIME` (time since the kernel started, suspend included).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns a `-1` return into the current `errno` as an [`io::Error`].
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Symbolic name of an errno value (`ENOENT`), for `errno_name` fields of the protocol.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EDQUOT => "EDQUOT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        _ => "EUNKNOWN",
    }
}

/// `mount(2)` with optional source, fstype and data.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(|s| CString::new(s).unwrap_or_default());
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    let target = cstring(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a NUL-terminated string alive for the call.
    cvt(unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data) as *const libc::c_void) })
        .map(drop)
}

pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Makes sure descriptors 0, 1 and 2 are open (on the console, else `/dev/null`): an
/// initramfs without `/dev/console` leaves them closed, and a pipe would then land on them.
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        for dev in [c"/dev/console", c"/dev/null"] {
            // SAFETY: NUL-terminated path; the new descriptor is moved onto `fd`.
            let new = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
            if new >= 0 {
                if new != fd {
                    unsafe {
                        libc::dup2(new, fd);
                        libc::close(new);
                    }
                }
                break;
            }
        }
    }
}

/// Ends the VM: stop everything, flush, power off. `kill_all` is false beside a handed-off
/// init, whose processes are not ours to kill. Never returns.
pub fn power_off(kill_all: bool) -> ! {
    if kill_all {
        // SAFETY: plain syscalls; as PID 1, kill(-1) reaches every other process.
        unsafe {
            libc::kill(-1, libc::SIGTERM);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        unsafe {
            libc::kill(-1, libc::SIGKILL);
        }
    }
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Not permitted (not in a VM, or not root): just leave.
    std::process::exit(0)
}

/// Mixes `seed` into the kernel's pool as entropy (`RNDADDENTROPY`, credited) and asks for a
/// reseed of the CRNG (`RNDRESEEDCRNG`, Linux ≥ 4.17): a cloned guest's generator state is
/// its source's until then.
pub fn add_entropy(seed: &[u8]) -> io::Result<()> {
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    if seed.is_empty() {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a rand_pool_info of `seed.len()` bytes, 4-byte padded.
    cvt(unsafe { libc::ioctl(file.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // SAFETY: no argument.
    if unsafe { libc::ioctl(file.as_raw_fd(), RNDRESEEDCRNG as _) } == -1 {
        crate::log_warn!("fork: RNDRESEEDCRNG: {}", io::Error::last_os_error());
    }
    Ok(())
}
