//! `kubesandbox.claim`: a booted pool VM becomes the Sandbox that claimed it.
//!
//! What the node agent would have put into `boot.json` and the writable layer, applied to the
//! running guest: the hostname (kernel, `/etc/hostname`, `/etc/hosts`), a fresh
//! `/etc/machine-id`, entropy mixed into the kernel's pool, the scripts under `/.msb/scripts`
//! (the claimant's set replaces the template's). The environment is the caller's to swap in
//! (it lives in the server's defaults). Everything is validated before anything is changed,
//! so a refused claim leaves the VM as it was. Only the node agent sends this message; a
//! client of the relay that sends it changes its own sandbox, which it may already do by exec.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ksb_protocol::messages::Claim;

use crate::defaults::SCRIPTS_DIR;

const MAX_SCRIPTS: usize = 64;
const MAX_ENTROPY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClaimError {
    let what = what.into();
    move |source| ClaimError::Io { what, source }
}

fn dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn script_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Refuses a claim before anything changes, naming the field.
pub fn validate(claim: &Claim) -> Result<(), ClaimError> {
    let bad = |m: String| Err(ClaimError::Invalid(m));
    if !dns_label(&claim.hostname) {
        return bad(format!("hostname {:?} is not a DNS label", claim.hostname));
    }
    if claim.machine_id.len() != 32 || !claim.machine_id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return bad("machine_id must be 32 lowercase hex digits".into());
    }
    if claim.entropy.len() > MAX_ENTROPY {
        return bad(format!("entropy: at most {MAX_ENTROPY} bytes"));
    }
    if let Some(e) = claim.env.iter().find(|e| !e.contains('=') || e.starts_with('=') || e.contains('\0')) {
        return bad(format!("env entry {e:?} is not KEY=VALUE"));
    }
    if claim.scripts.len() > MAX_SCRIPTS {
        return bad(format!("scripts: at most {MAX_SCRIPTS}"));
    }
    if let Some(s) = claim.scripts.iter().find(|s| !script_name(&s.name)) {
        return bad(format!("script name {:?} is not a plain file name", s.name));
    }
    Ok(())
}

/// Writes the claim's files under `root` (`/` in the VM): machine-id, hostname files, scripts.
pub fn write_files(claim: &Claim, root: &Path) -> Result<(), ClaimError> {
    let etc = root.join("etc");
    if etc.is_dir() {
        fs::write(etc.join("machine-id"), format!("{}\n", claim.machine_id)).map_err(io_error("/etc/machine-id"))?;
        fs::write(etc.join("hostname"), format!("{}\n", claim.hostname)).map_err(io_error("/etc/hostname"))?;
        let hosts = etc.join("hosts");
        let existing = fs::read_to_string(&hosts).unwrap_or_default();
        fs::write(&hosts, crate::boot::hosts_file(&existing, &claim.hostname)).map_err(io_error("/etc/hosts"))?;
    }
    let scripts = root.join(SCRIPTS_DIR.trim_start_matches('/'));
    fs::create_dir_all(&scripts).map_err(io_error(SCRIPTS_DIR))?;
    for entry in fs::read_dir(&scripts).map_err(io_error(SCRIPTS_DIR))? {
        let path = entry.map_err(io_error(SCRIPTS_DIR))?.path();
        if !path.is_dir() {
            fs::remove_file(&path).map_err(io_error(path.display().to_string()))?;
        }
    }
    for script in &claim.scripts {
        let path = scripts.join(&script.name);
        fs::write(&path, &script.content).map_err(io_error(path.display().to_string()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io_error(path.display().to_string()))?;
    }
    Ok(())
}

/// Everything but the environment, in the running VM.
pub fn apply(claim: &Claim) -> Result<(), ClaimError> {
    validate(claim)?;
    crate::boot::set_hostname(&claim.hostname).map_err(io_error("sethostname"))?;
    write_files(claim, Path::new("/"))?;
    if !claim.entropy.is_empty() {
        // Written entropy is mixed into the pool (not credited): enough to make two clones of
        // one booted VM diverge.
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")
            .and_then(|mut f| f.write_all(&claim.entropy))
            .map_err(io_error("/dev/urandom"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksb_protocol::messages::Script;

    fn claim() -> Claim {
        Claim {
            env: vec!["A=1".into()],
            hostname: "mine".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            entropy: vec![1, 2, 3],
            scripts: vec![Script { name: "hello".into(), content: b"echo hi\n".to_vec() }],
        }
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ksb-claim-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        dir
    }

    #[test]
    fn a_valid_claim_passes() {
        validate(&claim()).unwrap();
    }

    type Spoil = fn(&mut Claim);

    #[test]
    fn bad_fields_are_refused_by_name() {
        let cases: Vec<(Spoil, &str)> = vec![
            (|c| c.hostname = "Not_A_Label".into(), "hostname"),
            (|c| c.machine_id = "xyz".into(), "machine_id"),
            (|c| c.env = vec!["NOEQUALS".into()], "env"),
            (|c| c.scripts[0].name = "../escape".into(), "script name"),
            (|c| c.scripts[0].name = ".hidden".into(), "script name"),
            (|c| c.entropy = vec![0; MAX_ENTROPY + 1], "entropy"),
        ];
        for (spoil, field) in cases {
            let mut c = claim();
            spoil(&mut c);
            let message = validate(&c).unwrap_err().to_string();
            assert!(message.contains(field), "{message}");
        }
    }

    #[test]
    fn files_replace_the_template_ones() {
        let root = tempdir("files");
        let scripts = root.join(".msb/scripts");
        fs::create_dir_all(&scripts).unwrap();
        fs::write(scripts.join("template-only"), "x").unwrap();
        fs::write(root.join("etc/machine-id"), "ffffffffffffffffffffffffffffffff\n").unwrap();
        write_files(&claim(), &root).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/machine-id")).unwrap(), "0123456789abcdef0123456789abcdef\n");
        assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "mine\n");
        assert!(fs::read_to_string(root.join("etc/hosts")).unwrap().contains("127.0.1.1\tmine"));
        assert!(!scripts.join("template-only").exists());
        let hello = scripts.join("hello");
        assert_eq!(fs::read(&hello).unwrap(), b"echo hi\n");
        assert_eq!(fs::metadata(&hello).unwrap().permissions().mode() & 0o777, 0o755);
        fs::remove_dir_all(&root).unwrap();
    }
}
