//! The sandbox-wide defaults every exec starts from (from `boot.json`), and the environment
//! merge rule: defaults, then the request's own `KEY=VALUE` entries over them.

pub const SCRIPTS_DIR: &str = "/.msb/scripts";
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub shell: Option<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults::new(&[], None, None, None)
    }
}

fn split(entry: &str) -> Option<(String, String)> {
    let (k, v) = entry.split_once('=')?;
    (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

impl Defaults {
    /// Builds defaults from `boot.json` values; `PATH` always exists and ends with the
    /// scripts directory.
    pub fn new(env: &[String], workdir: Option<String>, user: Option<String>, shell: Option<String>) -> Self {
        let mut vars: Vec<(String, String)> = Vec::new();
        for e in env {
            if let Some((k, v)) = split(e) {
                set(&mut vars, &k, v);
            }
        }
        let path =
            vars.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_else(|| DEFAULT_PATH.into());
        if !path.split(':').any(|p| p == SCRIPTS_DIR) {
            set(&mut vars, "PATH", format!("{path}:{SCRIPTS_DIR}"));
        }
        // The SDK runs `shell()` scripts with the shell it knows from the spec; programs
        // inside the sandbox learn it from SHELL.
        if let Some(sh) = &shell {
            if !vars.iter().any(|(k, _)| k == "SHELL") {
                vars.push(("SHELL".into(), sh.clone()));
            }
        }
        Defaults { env: vars, workdir, user, shell }
    }

    /// The environment of one exec: defaults, `HOME`/`USER` of the identity when unset, then
    /// the request's entries (malformed entries without `=` are ignored).
    pub fn exec_env(
        &self,
        request: &[String],
        home: Option<&str>,
        user: Option<&str>,
        tty: bool,
    ) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        let has = |env: &Vec<(String, String)>, k: &str| env.iter().any(|(key, _)| key == k);
        if let Some(h) = home {
            if !has(&env, "HOME") {
                env.push(("HOME".into(), h.into()));
            }
        }
        if let Some(u) = user {
            if !has(&env, "USER") {
                env.push(("USER".into(), u.into()));
            }
            if !has(&env, "LOGNAME") {
                env.push(("LOGNAME".into(), u.into()));
            }
        }
        if tty && !has(&env, "TERM") {
            env.push(("TERM".into(), "xterm".into()));
        }
        for e in request {
            if let Some((k, v)) = split(e) {
                set(&mut env, &k, v);
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn path_gets_the_scripts_dir_once() {
        let d = Defaults::new(&["PATH=/bin".into()], None, None, None);
        assert_eq!(get(&d.env, "PATH"), Some("/bin:/.msb/scripts"));
        let d = Defaults::new(&["PATH=/bin:/.msb/scripts".into()], None, None, None);
        assert_eq!(get(&d.env, "PATH"), Some("/bin:/.msb/scripts"));
        let d = Defaults::default();
        assert_eq!(get(&d.env, "PATH").unwrap(), format!("{DEFAULT_PATH}:/.msb/scripts"));
    }

    #[test]
    fn shell_becomes_shell_unless_set() {
        let d = Defaults::new(&[], None, None, Some("/bin/bash".into()));
        assert_eq!(get(&d.env, "SHELL"), Some("/bin/bash"));
        let d = Defaults::new(&["SHELL=/bin/zsh".into()], None, None, Some("/bin/bash".into()));
        assert_eq!(get(&d.env, "SHELL"), Some("/bin/zsh"));
    }

    #[test]
    fn request_env_overrides_defaults() {
        let d = Defaults::new(&["A=1".into(), "B=2".into()], None, None, None);
        let env = d.exec_env(&["B=3".into(), "C=x=y".into(), "junk".into()], Some("/root"), Some("root"), true);
        assert_eq!(get(&env, "A"), Some("1"));
        assert_eq!(get(&env, "B"), Some("3"));
        assert_eq!(get(&env, "C"), Some("x=y"));
        assert_eq!(get(&env, "HOME"), Some("/root"));
        assert_eq!(get(&env, "TERM"), Some("xterm"));
        assert!(get(&env, "junk").is_none());
    }
}
