//! Synchronous PID-1 setup, run before any thread or runtime exists:
//! early mounts → boot.json → kernel modules → root assembly and volumes → switch root →
//! hostname, hosts, network → defaults for execs. Then `main` either keeps the agent as PID 1
//! or hands PID 1 to the image's init (see [`handoff`]).

pub mod config;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod rootfs;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::defaults::{Defaults, SCRIPTS_DIR};
use crate::{log_info, log_warn};
use config::{BootConfig, ConfigError, Init};

pub const BOOT_CONFIG: &str = "/.kubesandbox/boot.json";

/// Inits tried, in order, for `init: "auto"`.
pub const AUTO_INITS: &[&str] = &[
    "/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
    "/sbin/openrc-init",
    "/usr/bin/s6-svscan",
    "/sbin/runit-init",
];

#[derive(Debug, Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{stage}: {source}")]
    Io { stage: &'static str, source: io::Error },
    #[error("init {0:?} requested but none of the candidates exists")]
    NoInit(String),
}

fn stage(stage: &'static str) -> impl FnOnce(io::Error) -> BootError {
    move |source| BootError::Io { stage, source }
}

/// What the setup produced for the rest of the agent.
#[derive(Debug)]
pub struct Booted {
    pub defaults: Defaults,
    /// The image's init to hand PID 1 to, when asked for.
    pub init: Option<PathBuf>,
    pub init_time_ns: u64,
}

/// Reads boot.json; `Ok(None)` when absent (a bare boot image: serve from the initramfs).
pub fn read_config(path: &Path) -> Result<Option<BootConfig>, BootError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(BootConfig::parse(&text)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BootError::Io { stage: "read boot.json", source: e }),
    }
}

/// Picks the init binary for `init` inside the (already switched) root.
pub fn resolve_init(init: &Init, root: &Path) -> Result<Option<PathBuf>, BootError> {
    match init {
        Init::Agent => Ok(None),
        Init::Path(p) => {
            let full = root.join(p.trim_start_matches('/'));
            if full.exists() {
                Ok(Some(PathBuf::from(p)))
            } else {
                Err(BootError::NoInit(p.clone()))
            }
        }
        Init::Auto => AUTO_INITS
            .iter()
            .find(|p| root.join(p.trim_start_matches('/')).exists())
            .map(|p| Some(PathBuf::from(p)))
            .ok_or_else(|| BootError::NoInit("auto".into())),
    }
}

/// Adds `localhost` and the hostname to `/etc/hosts` when missing.
pub fn hosts_file(existing: &str, hostname: &str) -> String {
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let has_name = |name: &str| {
        existing.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("");
            l.split_whitespace().skip(1).any(|n| n == name)
        })
    };
    if !has_name("localhost") {
        out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    }
    if !hostname.is_empty() && !has_name(hostname) {
        out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    out
}

pub(crate) fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    crate::sys::cvt(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) }).map(drop)
}

/// The whole PID-1 setup. `start_ns` is the boot clock when `main` started.
pub fn setup(start_ns: u64) -> Result<Booted, BootError> {
    mounts::mount_early(Path::new("/")).map_err(stage("early mounts"))?;
    let config = read_config(Path::new(BOOT_CONFIG))?;
    if let Some(c) = &config {
        crate::log::set_level(c.log_level);
    }
    let n = modules::load_all(Path::new(modules::ORDER_FILE));
    log_info!("loaded {n} kernel module(s)");
    net::loopback_up();

    let Some(config) = config else {
        log_warn!("no {BOOT_CONFIG}: serving from the initramfs root with default settings");
        let _ = std::fs::create_dir_all(SCRIPTS_DIR);
        return Ok(Booted {
            defaults: Defaults::default(),
            init: None,
            init_time_ns: crate::sys::boottime_ns() - start_ns,
        });
    };

    let new_root = rootfs::assemble(&config.root).map_err(stage("root filesystem"))?;
    rootfs::mount_volumes(&new_root, &config.volumes).map_err(stage("volumes"))?;
    if let Err(e) = std::fs::create_dir_all(new_root.join(SCRIPTS_DIR.trim_start_matches('/'))) {
        log_warn!("cannot create {SCRIPTS_DIR}: {e}");
    }
    mounts::move_into(&new_root).map_err(stage("move early mounts"))?;
    rootfs::switch_root(&new_root).map_err(stage("switch root"))?;

    if let Some(h) = &config.hostname {
        set_hostname(h).map_err(stage("sethostname"))?;
        let existing = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if let Err(e) = std::fs::write("/etc/hosts", hosts_file(&existing, h)) {
            log_warn!("cannot write /etc/hosts: {e}");
        }
    }
    if let Some(network) = &config.network {
        net::configure(network, Path::new("/")).map_err(stage("network"))?;
    }
    if let Some(workdir) = &config.workdir {
        // Like a Dockerfile's WORKDIR: every command starts there, so it must exist even when
        // the image does not have it.
        if let Err(e) = std::fs::create_dir_all(workdir) {
            log_warn!("cannot create workdir {workdir}: {e}");
        }
    }
    let init = resolve_init(&config.init, Path::new("/"))?;
    let defaults = Defaults::new(&config.env, config.workdir.clone(), config.user.clone(), config.shell.clone());
    Ok(Booted { defaults, init, init_time_ns: crate::sys::boottime_ns() - start_ns })
}

/// `/etc/hosts` with the `127.0.1.1` line naming `hostname` instead of the old name.
pub fn rename_in_hosts(existing: &str, hostname: &str) -> String {
    let kept: String =
        existing.lines().filter(|l| !l.trim_start().starts_with("127.0.1.1")).map(|l| format!("{l}\n")).collect();
    hosts_file(&kept, hostname)
}

/// `core.forked`: a new identity for a guest cloned from another's live state. Each step is
/// logged and never fatal: the clone serves on with what could be done.
pub fn reidentify(forked: &ksb_protocol::messages::Forked) {
    if let Err(e) = set_hostname(&forked.hostname) {
        log_warn!("fork: sethostname: {e}");
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if let Err(e) = std::fs::write("/etc/hosts", rename_in_hosts(&hosts, &forked.hostname)) {
        log_warn!("fork: cannot write /etc/hosts: {e}");
    }
    if Path::new("/etc/hostname").exists() {
        let _ = std::fs::write("/etc/hostname", format!("{}\n", forked.hostname));
    }
    let id = &forked.machine_id;
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
            let p = Path::new(path);
            let is_file = std::fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false);
            if (is_file || path == "/etc/machine-id") && p.parent().is_some_and(Path::exists) {
                if let Err(e) = std::fs::write(p, format!("{id}\n")) {
                    log_warn!("fork: cannot write {path}: {e}");
                }
            }
        }
    }
    if let Err(e) = crate::sys::add_entropy(&forked.seed) {
        log_warn!("fork: entropy: {e}");
    }
    for iface in &forked.interfaces {
        if let Err(e) = net::reconfigure(iface) {
            log_warn!("fork: network {}: {e}", iface.mac);
        }
    }
    log_info!("fork: now {} (machine-id {id}), {} interface(s) reconfigured", forked.hostname, forked.interfaces.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_gains_localhost_and_hostname_once() {
        let out = hosts_file("", "worker");
        assert!(out.contains("127.0.0.1\tlocalhost") && out.contains("127.0.1.1\tworker"));
        assert_eq!(hosts_file(&out, "worker"), out);
        let debian = "127.0.0.1 localhost\n# 127.0.1.1 worker\n";
        let out = hosts_file(debian, "worker");
        assert_eq!(out.matches("localhost").count(), 1);
        assert!(out.ends_with("127.0.1.1\tworker\n"));
    }

    #[test]
    fn a_fork_renames_itself_in_hosts() {
        let before = "127.0.0.1\tlocalhost\n127.0.1.1\tsource\n::1 ip6\n";
        let after = rename_in_hosts(before, "copy");
        assert!(after.contains("127.0.1.1\tcopy\n") && !after.contains("source"));
        assert!(after.contains("::1 ip6\n") && after.contains("127.0.0.1\tlocalhost"));
    }

    #[test]
    fn resolves_init_candidates_inside_the_root() {
        let root = std::env::temp_dir().join(format!("ksb-init-{}", std::process::id()));
        std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
        std::fs::write(root.join("lib/systemd/systemd"), "").unwrap();
        assert_eq!(resolve_init(&Init::Auto, &root).unwrap(), Some(PathBuf::from("/lib/systemd/systemd")));
        assert_eq!(resolve_init(&Init::Agent, &root).unwrap(), None);
        assert!(matches!(resolve_init(&Init::Path("/sbin/init".into()), &root), Err(BootError::NoInit(_))));
        std::fs::remove_dir_all(root).unwrap();
    }
}
