//! Users and groups from the image's own `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static binary: glibc's NSS (`getpwnam`) would try to `dlopen` modules that
//! are not there, so we parse the files ourselves. Images without the files (distroless,
//! scratch) still work with numeric users.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, primary gid included.
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

impl Identity {
    pub fn root() -> Self {
        Identity { uid: 0, gid: 0, groups: vec![0], name: Some("root".into()), home: Some("/root".into()) }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in /etc/group")]
    UnknownGroup(String),
    #[error("empty user specification")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default();
            Some(GroupEntry { name: f[0].to_string(), gid: f[2].parse().ok()?, members })
        })
        .collect()
}

/// The user database of one root filesystem.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    passwd: Vec<PasswdEntry>,
    group: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads `<root>/etc/passwd` and `<root>/etc/group`; missing files are empty databases.
    pub fn load(root: &Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        UserDb { passwd: parse_passwd(&read("etc/passwd")), group: parse_group(&read("etc/group")) }
    }

    pub fn from_texts(passwd: &str, group: &str) -> Self {
        UserDb { passwd: parse_passwd(passwd), group: parse_group(group) }
    }

    /// Resolves `name`, `uid`, `uid:gid`, `name:group` (any mix of names and numbers).
    /// A numeric uid absent from `/etc/passwd` is allowed; its gid then defaults to the same
    /// number (as container runtimes do).
    pub fn resolve(&self, spec: &str) -> Result<Identity, UserError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(UserError::Empty);
        }
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let entry = match user.parse::<u32>() {
            Ok(uid) => self.passwd.iter().find(|e| e.uid == uid).cloned().or(Some(PasswdEntry {
                name: String::new(),
                uid,
                gid: uid,
                home: String::new(),
            })),
            Err(_) => self.passwd.iter().find(|e| e.name == user).cloned(),
        }
        .ok_or_else(|| UserError::UnknownUser(user.to_string()))?;
        let gid = match group {
            None | Some("") => entry.gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self
                    .group
                    .iter()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
            },
        };
        let mut groups = vec![gid];
        if !entry.name.is_empty() {
            for g in self.group.iter().filter(|g| g.members.contains(&entry.name)) {
                if !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
        Ok(Identity {
            uid: entry.uid,
            gid,
            groups,
            name: (!entry.name.is_empty()).then(|| entry.name.clone()),
            home: (!entry.home.is_empty()).then(|| PathBuf::from(&entry.home)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\napp:x:1000:1000::/home/app:/bin/sh\nweb:x:33:33:www:/var/www:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\ndocker:x:999:app,web\nvideo:x:44:app\n";

    fn db() -> UserDb {
        UserDb::from_texts(PASSWD, GROUP)
    }

    #[test]
    fn resolves_a_name_with_supplementary_groups() {
        let id = db().resolve("app").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.groups, vec![1000, 999, 44]);
        assert_eq!(id.home.as_deref(), Some(Path::new("/home/app")));
    }

    #[test]
    fn resolves_numeric_forms() {
        assert_eq!(db().resolve("33").unwrap().name.as_deref(), Some("web"));
        let id = db().resolve("1234:55").unwrap();
        assert_eq!((id.uid, id.gid, id.groups.clone()), (1234, 55, vec![55]));
        assert_eq!(db().resolve("4321").unwrap().gid, 4321);
    }

    #[test]
    fn resolves_name_and_group_name() {
        let id = db().resolve("web:docker").unwrap();
        assert_eq!((id.uid, id.gid), (33, 999));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(db().resolve("nobody"), Err(UserError::UnknownUser("nobody".into())));
        assert_eq!(db().resolve("app:nogroup"), Err(UserError::UnknownGroup("nogroup".into())));
        assert_eq!(db().resolve(""), Err(UserError::Empty));
    }

    #[test]
    fn works_without_any_database() {
        let id = UserDb::default().resolve("0").unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
    }
}
