//! Assembling the sandbox's root filesystem under `/newroot` and switching into it.
//!
//! Devices are found by virtio serial (`/sys/block/vd*/serial`), never by probe order.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::{Root, Volume, VolumeKind};
use crate::log_info;
use crate::sys;

pub const NEW_ROOT: &str = "/newroot";
/// Where layer and upper devices are mounted before the overlay is built.
const STAGING: &str = "/.kubesandbox/mnt";
/// Devices appear once the virtio modules probed them; wait this long at most.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=524288,cache=loose";

fn ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `/dev/vdX` of the block device whose virtio serial is `serial`.
pub fn find_block_device(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for entry in entries.flatten() {
        let found = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

fn wait_block_device(serial: &str) -> io::Result<PathBuf> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(dev) = find_block_device(Path::new("/sys/block"), serial) {
            if dev.exists() {
                return Ok(dev);
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no block device with serial {serial:?} after {DEVICE_WAIT:?} (is virtio_blk loaded?)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mount_dev(serial: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: Option<&str>) -> io::Result<()> {
    let dev = wait_block_device(serial)?;
    std::fs::create_dir_all(target).map_err(|e| ctx(e, format!("mkdir {}", target.display())))?;
    let dev_s = dev.to_string_lossy().into_owned();
    sys::mount(Some(&dev_s), target, Some(fstype), flags, data)
        .map_err(|e| ctx(e, format!("mount {dev_s} ({serial}, {fstype}) on {}", target.display())))
}

/// A host directory shared by tag: `9p` (`trans=virtio`) or `virtiofs`.
fn mount_share(fstype: &str, tag: &str, target: &Path, read_only: bool) -> io::Result<()> {
    std::fs::create_dir_all(target).map_err(|e| ctx(e, format!("mkdir {}", target.display())))?;
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    let data = (fstype == "9p").then_some(NINEP_OPTIONS);
    sys::mount(Some(tag), target, Some(fstype), flags, data).map_err(|e| {
        ctx(e, format!("mount {fstype} tag {tag:?} on {} (is the {fstype} module loaded?)", target.display()))
    })
}

/// The overlayfs `lowerdir` option: layers are given lowest first, overlayfs wants highest first.
pub fn overlay_options(layer_dirs: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layer_dirs.iter().rev().map(|p| p.display().to_string()).collect();
    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display())
}

/// Mounts the root described by `root` at [`NEW_ROOT`].
pub fn assemble(root: &Root) -> io::Result<PathBuf> {
    let new_root = PathBuf::from(NEW_ROOT);
    std::fs::create_dir_all(&new_root)?;
    match root {
        Root::Overlay { layers, upper } => {
            let staging = Path::new(STAGING);
            let mut dirs = Vec::new();
            for (i, serial) in layers.iter().enumerate() {
                let dir = staging.join(format!("layer{i}"));
                mount_dev(serial, &dir, "erofs", libc::MS_RDONLY, None)?;
                dirs.push(dir);
            }
            let upper_mnt = staging.join("upper");
            mount_dev(upper, &upper_mnt, "ext4", 0, None)?;
            let (up, work) = (upper_mnt.join("upper"), upper_mnt.join("work"));
            std::fs::create_dir_all(&up).map_err(|e| ctx(e, format!("mkdir {}", up.display())))?;
            std::fs::create_dir_all(&work).map_err(|e| ctx(e, format!("mkdir {}", work.display())))?;
            let opts = overlay_options(&dirs, &up, &work);
            sys::mount(Some("overlay"), &new_root, Some("overlay"), 0, Some(&opts))
                .map_err(|e| ctx(e, format!("mount overlay ({opts})")))?;
            log_info!("root: overlay of {} layer(s) over {upper}", layers.len());
        }
        Root::Disk { device, fstype } => {
            mount_dev(device, &new_root, fstype, 0, None)?;
            log_info!("root: {fstype} disk {device}");
        }
        Root::NineP { tag, read_only } => {
            mount_share("9p", tag, &new_root, *read_only)?;
            log_info!("root: 9p {tag} (read-only: {read_only})");
        }
        Root::VirtioFs { tag, read_only } => {
            mount_share("virtiofs", tag, &new_root, *read_only)?;
            log_info!("root: virtiofs {tag} (read-only: {read_only})");
        }
    }
    Ok(new_root)
}

/// Mounts `volumes` under `new_root`.
pub fn mount_volumes(new_root: &Path, volumes: &[Volume]) -> io::Result<()> {
    for v in volumes {
        let target = new_root.join(v.mount_path.trim_start_matches('/'));
        match &v.kind {
            VolumeKind::Tmpfs { size_mib } => {
                std::fs::create_dir_all(&target).map_err(|e| ctx(e, format!("mkdir {}", target.display())))?;
                let data = size_mib.map(|s| format!("size={s}m"));
                sys::mount(Some("tmpfs"), &target, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, data.as_deref())
                    .map_err(|e| ctx(e, format!("mount tmpfs on {}", v.mount_path)))?;
            }
            VolumeKind::NineP { tag, read_only } => mount_share("9p", tag, &target, *read_only)?,
            VolumeKind::VirtioFs { tag, read_only } => mount_share("virtiofs", tag, &target, *read_only)?,
            VolumeKind::Block { device, fstype, read_only } => {
                let flags = if *read_only { libc::MS_RDONLY } else { 0 };
                mount_dev(device, &target, fstype, flags, None)?
            }
        }
        log_info!("volume: {} ({:?})", v.mount_path, v.kind);
    }
    Ok(())
}

/// Makes `new_root` the root: move it over `/`, chroot, chdir. The initramfs stays in memory
/// underneath (it holds little: the agent and a few modules).
pub fn switch_root(new_root: &Path) -> io::Result<()> {
    std::env::set_current_dir(new_root)?;
    sys::mount(Some("."), Path::new("/"), None, libc::MS_MOVE, None).map_err(|e| ctx(e, "move new root to /"))?;
    // SAFETY: NUL-terminated literal.
    sys::cvt(unsafe { libc::chroot(c".".as_ptr()) }).map_err(|e| ctx(e, "chroot"))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_lists_the_highest_layer_first() {
        let dirs = vec![PathBuf::from("/m/layer0"), PathBuf::from("/m/layer1"), PathBuf::from("/m/layer2")];
        assert_eq!(
            overlay_options(&dirs, Path::new("/m/upper/upper"), Path::new("/m/upper/work")),
            "lowerdir=/m/layer2:/m/layer1:/m/layer0,upperdir=/m/upper/upper,workdir=/m/upper/work"
        );
    }

    #[test]
    fn finds_devices_by_serial() {
        let dir = std::env::temp_dir().join(format!("ksb-sysblock-{}", std::process::id()));
        for (dev, serial) in [("vda", "layer0\n"), ("vdb", "upper")] {
            std::fs::create_dir_all(dir.join(dev)).unwrap();
            std::fs::write(dir.join(dev).join("serial"), serial).unwrap();
        }
        assert_eq!(find_block_device(&dir, "upper"), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(find_block_device(&dir, "layer0"), Some(PathBuf::from("/dev/vda")));
        assert_eq!(find_block_device(&dir, "nope"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
