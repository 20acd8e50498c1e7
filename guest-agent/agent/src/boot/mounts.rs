//! The early mounts of PID 1, as data.

use std::io;
use std::path::Path;

use crate::sys;

pub struct EarlyMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
    /// Moved into the assembled root before switching to it (children move along).
    pub move_into_root: bool,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Mounted in order, in the initramfs, before anything else runs.
pub const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        move_into_root: true,
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID | NODEV | NOEXEC,
        data: "",
        move_into_root: true,
    },
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID,
        data: "mode=0755",
        move_into_root: true,
    },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        move_into_root: false,
    },
    EarlyMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
        move_into_root: false,
    },
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=0755",
        move_into_root: true,
    },
    EarlyMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID | NODEV,
        data: "mode=1777",
        move_into_root: true,
    },
];

/// Symlinks devtmpfs does not create but programs expect.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("/proc/kcore", "/dev/core"),
];

/// Mounts the table under `prefix` (`/` at boot). Already-mounted targets (`EBUSY`) are fine.
pub fn mount_early(prefix: &Path) -> io::Result<()> {
    for m in EARLY_MOUNTS {
        let target = prefix.join(m.target.trim_start_matches('/'));
        std::fs::create_dir_all(&target)?;
        let data = (!m.data.is_empty()).then_some(m.data);
        match sys::mount(Some(m.source), &target, Some(m.fstype), m.flags, data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("mount {}: {e}", target.display()))),
        }
    }
    for (src, link) in DEV_LINKS {
        let _ = std::os::unix::fs::symlink(src, prefix.join(link.trim_start_matches('/')));
    }
    Ok(())
}

/// Moves the early mounts flagged `move_into_root` under `new_root`.
pub fn move_into(new_root: &Path) -> io::Result<()> {
    for m in EARLY_MOUNTS.iter().filter(|m| m.move_into_root) {
        let target = new_root.join(m.target.trim_start_matches('/'));
        std::fs::create_dir_all(&target)
            .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", target.display())))?;
        sys::mount(Some(m.target), &target, None, libc::MS_MOVE, None)
            .map_err(|e| io::Error::new(e.kind(), format!("move {} to {}: {e}", m.target, target.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_children_and_children_move_with_them() {
        for (i, m) in EARLY_MOUNTS.iter().enumerate() {
            let parent = Path::new(m.target).parent().unwrap();
            if parent != Path::new("/") {
                let p = EARLY_MOUNTS.iter().position(|x| Path::new(x.target) == parent).unwrap();
                assert!(p < i, "{} mounted before its parent", m.target);
                assert!(!m.move_into_root && EARLY_MOUNTS[p].move_into_root);
            }
        }
    }
}
