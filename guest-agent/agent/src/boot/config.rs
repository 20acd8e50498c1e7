//! `/.kubesandbox/boot.json`: parsing and validation (contract: docs/boot-config.md).
//!
//! Parsed by hand from a `serde_json::Value` rather than derived, so that every error names
//! the key path (`root.layers[1]`, `volumes[0].mountPath`) the node agent got wrong. Unknown
//! keys are ignored for forward compatibility.

use serde_json::{Map, Value};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("boot.json: {path}: {problem}")]
pub struct ConfigError {
    pub path: String,
    pub problem: String,
}

fn err(path: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { path: path.to_string(), problem: problem.into() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// EROFS layers (serials, lowest first) under an ext4 upper device.
    Overlay {
        layers: Vec<String>,
        upper: String,
    },
    Disk {
        device: String,
        fstype: String,
    },
    NineP {
        tag: String,
        read_only: bool,
    },
    /// A host directory over virtio-fs (the Debian cloud kernel has no 9p).
    VirtioFs {
        tag: String,
        read_only: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    Tmpfs { size_mib: Option<u64> },
    NineP { tag: String, read_only: bool },
    VirtioFs { tag: String, read_only: bool },
    Block { device: String, fstype: String, read_only: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub mount_path: String,
    pub kind: VolumeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// The agent stays PID 1.
    Agent,
    /// The first existing well-known init of the image.
    Auto,
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: String,
    /// IPv4 CIDRs (`10.0.2.15/24`).
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub hostname: Option<String>,
    pub root: Root,
    pub volumes: Vec<Volume>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub shell: Option<String>,
    pub init: Init,
    pub network: Option<Network>,
    pub log_level: LogLevel,
}

/// A JSON object with the key path it was found at.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: &str, value: &'a Value) -> Result<Self, ConfigError> {
        let shown = if path.is_empty() { "(top level)" } else { path };
        match value {
            Value::Object(map) => Ok(Obj { path: path.to_string(), map }),
            _ => Err(err(shown, "expected an object")),
        }
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn req(&self, k: &str) -> Result<&'a Value, ConfigError> {
        self.get(k).ok_or_else(|| err(&self.key(k), "required key is missing"))
    }

    fn str_req(&self, k: &str) -> Result<String, ConfigError> {
        as_str(&self.key(k), self.req(k)?)
    }

    fn str_opt(&self, k: &str) -> Result<Option<String>, ConfigError> {
        self.get(k).map(|v| as_str(&self.key(k), v)).transpose()
    }

    fn bool_opt(&self, k: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(err(&self.key(k), "expected true or false")),
        }
    }

    fn u64_opt(&self, k: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| err(&self.key(k), "expected a non-negative integer")),
        }
    }

    fn str_list(&self, k: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| as_str(&format!("{}[{i}]", self.key(k)), v)).collect()
            }
            Some(_) => Err(err(&self.key(k), "expected a list of strings")),
        }
    }
}

fn as_str(path: &str, v: &Value) -> Result<String, ConfigError> {
    v.as_str().map(str::to_string).ok_or_else(|| err(path, "expected a string"))
}

fn absolute(path: &str, value: String) -> Result<String, ConfigError> {
    if value.starts_with('/') && !value.contains('\0') {
        Ok(value)
    } else {
        Err(err(path, format!("expected an absolute path, got {value:?}")))
    }
}

fn non_empty(path: &str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() {
        Err(err(path, "must not be empty"))
    } else {
        Ok(value)
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_root(o: &Obj) -> Result<Root, ConfigError> {
    let root = Obj::new(&o.key("root"), o.req("root")?)?;
    let kind = root.str_req("kind")?;
    match kind.as_str() {
        "overlay" => {
            let layers = root.str_list("layers")?;
            if layers.is_empty() {
                return Err(err(&root.key("layers"), "an overlay root needs at least one layer"));
            }
            Ok(Root::Overlay { layers, upper: non_empty(&root.key("upper"), root.str_req("upper")?)? })
        }
        "disk" => Ok(Root::Disk {
            device: non_empty(&root.key("device"), root.str_req("device")?)?,
            fstype: root.str_opt("fstype")?.unwrap_or_else(|| "ext4".into()),
        }),
        "9p" => Ok(Root::NineP {
            tag: non_empty(&root.key("tag"), root.str_req("tag")?)?,
            read_only: root.bool_opt("readOnly", false)?,
        }),
        "virtiofs" => Ok(Root::VirtioFs {
            tag: non_empty(&root.key("tag"), root.str_req("tag")?)?,
            read_only: root.bool_opt("readOnly", false)?,
        }),
        other => Err(err(&root.key("kind"), format!("unknown root kind {other:?} (overlay, disk, 9p, virtiofs)"))),
    }
}

fn parse_volume(path: &str, v: &Value) -> Result<Volume, ConfigError> {
    let o = Obj::new(path, v)?;
    let mount_path = absolute(&o.key("mountPath"), o.str_req("mountPath")?)?;
    if mount_path == "/" {
        return Err(err(&o.key("mountPath"), "a volume cannot be mounted at /"));
    }
    let kind = match o.str_req("kind")?.as_str() {
        "tmpfs" => VolumeKind::Tmpfs { size_mib: o.u64_opt("sizeMiB")? },
        "9p" => VolumeKind::NineP {
            tag: non_empty(&o.key("tag"), o.str_req("tag")?)?,
            read_only: o.bool_opt("readOnly", false)?,
        },
        "virtiofs" => VolumeKind::VirtioFs {
            tag: non_empty(&o.key("tag"), o.str_req("tag")?)?,
            read_only: o.bool_opt("readOnly", false)?,
        },
        "block" => VolumeKind::Block {
            device: non_empty(&o.key("device"), o.str_req("device")?)?,
            fstype: o.str_opt("fstype")?.unwrap_or_else(|| "ext4".into()),
            read_only: o.bool_opt("readOnly", false)?,
        },
        other => {
            return Err(err(&o.key("kind"), format!("unknown volume kind {other:?} (tmpfs, 9p, virtiofs, block)")))
        }
    };
    Ok(Volume { mount_path, kind })
}

fn parse_network(path: &str, v: &Value) -> Result<Network, ConfigError> {
    let o = Obj::new(path, v)?;
    let mut interfaces = Vec::new();
    match o.get("interfaces") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let io = Obj::new(&format!("{}[{i}]", o.key("interfaces")), item)?;
                let mac = io.str_req("mac")?.to_ascii_lowercase();
                if crate::boot::net::parse_mac(&mac).is_none() {
                    return Err(err(&io.key("mac"), format!("not a MAC address: {mac:?}")));
                }
                let addresses = io.str_list("addresses")?;
                for (j, a) in addresses.iter().enumerate() {
                    if crate::boot::net::parse_cidr(a).is_none() {
                        return Err(err(&format!("{}[{j}]", io.key("addresses")), format!("not an IPv4 CIDR: {a:?}")));
                    }
                }
                let gateway = io.str_opt("gateway")?;
                if let Some(g) = &gateway {
                    if g.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(err(&io.key("gateway"), format!("not an IPv4 address: {g:?}")));
                    }
                }
                interfaces.push(Interface { mac, addresses, gateway });
            }
        }
        Some(_) => return Err(err(&o.key("interfaces"), "expected a list")),
    }
    let dns = o.str_list("dns")?;
    for (i, d) in dns.iter().enumerate() {
        if d.parse::<std::net::IpAddr>().is_err() {
            return Err(err(&format!("{}[{i}]", o.key("dns")), format!("not an IP address: {d:?}")));
        }
    }
    Ok(Network { interfaces, dns })
}

impl BootConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| err("(document)", format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        let o = Obj::new("", value)?;
        match o.req("version")?.as_u64() {
            Some(1) => {}
            _ => return Err(err("version", "unsupported version (this agent reads version 1)")),
        }
        let hostname = o.str_opt("hostname")?;
        if let Some(h) = &hostname {
            if !valid_hostname(h) {
                return Err(err("hostname", format!("not a valid hostname: {h:?}")));
            }
        }
        let root = parse_root(&o)?;
        let volumes = match o.get("volumes") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_volume(&format!("volumes[{i}]"), v))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err("volumes", "expected a list")),
        };
        let env = o.str_list("env")?;
        for (i, e) in env.iter().enumerate() {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(err(&format!("env[{i}]"), format!("expected KEY=VALUE, got {e:?}"))),
            }
        }
        let workdir = o.str_opt("workdir")?.map(|w| absolute("workdir", w)).transpose()?;
        let user = o.str_opt("user")?.map(|u| non_empty("user", u)).transpose()?;
        let shell = o.str_opt("shell")?.map(|s| non_empty("shell", s)).transpose()?;
        let init = match o.str_opt("init")? {
            None => Init::Agent,
            Some(s) if s == "auto" => Init::Auto,
            Some(s) => Init::Path(absolute("init", s)?),
        };
        let network = o.get("network").map(|v| parse_network("network", v)).transpose()?;
        let log_level = match o.str_opt("logLevel")?.as_deref() {
            None | Some("info") => LogLevel::Info,
            Some("error") => LogLevel::Error,
            Some("warn") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some("trace") => LogLevel::Trace,
            Some(other) => return Err(err("logLevel", format!("unknown level {other:?}"))),
        };
        Ok(BootConfig { hostname, root, volumes, env, workdir, user, shell, init, network, log_level })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "version": 1,
      "hostname": "worker",
      "root": {"kind": "overlay", "layers": ["layer0", "layer1"], "upper": "upper"},
      "volumes": [
        {"mountPath": "/data", "kind": "tmpfs", "sizeMiB": 100},
        {"mountPath": "/src", "kind": "9p", "tag": "vol1", "readOnly": true}
      ],
      "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DEBUG=true"],
      "workdir": "/app",
      "user": "1000:1000",
      "shell": "/bin/sh",
      "init": null,
      "network": null,
      "logLevel": "info",
      "someFutureKey": {"ignored": true}
    }"#;

    fn with(patch: &str, value: serde_json::Value) -> Result<BootConfig, ConfigError> {
        let mut doc: Value = serde_json::from_str(EXAMPLE).unwrap();
        let mut cur = &mut doc;
        let parts: Vec<&str> = patch.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = match p.parse::<usize>() {
                Ok(i) => &mut cur[i],
                Err(_) => &mut cur[*p],
            };
        }
        let last = parts[parts.len() - 1];
        if value == Value::String("<delete>".into()) {
            cur.as_object_mut().unwrap().remove(last);
        } else {
            cur[last] = value;
        }
        BootConfig::from_value(&doc)
    }

    fn path_of(r: Result<BootConfig, ConfigError>) -> String {
        r.unwrap_err().path
    }

    #[test]
    fn parses_the_documented_example() {
        let c = BootConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.root, Root::Overlay { layers: vec!["layer0".into(), "layer1".into()], upper: "upper".into() });
        assert_eq!(
            c.volumes[0],
            Volume { mount_path: "/data".into(), kind: VolumeKind::Tmpfs { size_mib: Some(100) } }
        );
        assert_eq!(c.volumes[1].kind, VolumeKind::NineP { tag: "vol1".into(), read_only: true });
        assert_eq!(c.init, Init::Agent);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.log_level, LogLevel::Info);
    }

    #[test]
    fn errors_name_the_key_path() {
        use serde_json::json;
        assert_eq!(path_of(with("version", json!("<delete>"))), "version");
        assert_eq!(path_of(with("version", json!(2))), "version");
        assert_eq!(path_of(with("root", json!("<delete>"))), "root");
        assert_eq!(path_of(with("root.kind", json!("zfs"))), "root.kind");
        assert_eq!(path_of(with("root.layers", json!(["a", 3]))), "root.layers[1]");
        assert_eq!(path_of(with("root.layers", json!([]))), "root.layers");
        assert_eq!(path_of(with("root.upper", json!("<delete>"))), "root.upper");
        assert_eq!(path_of(with("volumes.0.mountPath", json!("data"))), "volumes[0].mountPath");
        assert_eq!(path_of(with("volumes.1.tag", json!("<delete>"))), "volumes[1].tag");
        assert_eq!(path_of(with("volumes.0.sizeMiB", json!(-1))), "volumes[0].sizeMiB");
        assert_eq!(path_of(with("volumes.1.readOnly", json!("yes"))), "volumes[1].readOnly");
        assert_eq!(path_of(with("env", json!(["NOVALUE"]))), "env[0]");
        assert_eq!(path_of(with("workdir", json!("app"))), "workdir");
        assert_eq!(path_of(with("init", json!("sbin/init"))), "init");
        assert_eq!(path_of(with("hostname", json!("bad host"))), "hostname");
        assert_eq!(path_of(with("logLevel", json!("loud"))), "logLevel");
        assert_eq!(
            path_of(with("network", json!({"interfaces": [{"mac": "zz", "addresses": []}]}))),
            "network.interfaces[0].mac"
        );
        assert_eq!(
            path_of(with("network", json!({"interfaces": [{"mac": "52:54:00:12:34:56", "addresses": ["10.0.2.15"]}]}))),
            "network.interfaces[0].addresses[0]"
        );
        assert_eq!(path_of(with("network", json!({"dns": ["x"]}))), "network.dns[0]");
    }

    #[test]
    fn error_message_reads_well() {
        let e = with("root.layers", serde_json::json!(["a", 3])).unwrap_err();
        assert_eq!(e.to_string(), "boot.json: root.layers[1]: expected a string");
    }

    #[test]
    fn other_root_kinds_and_init_modes() {
        use serde_json::json;
        let c = with("root", json!({"kind": "disk", "device": "root"})).unwrap();
        assert_eq!(c.root, Root::Disk { device: "root".into(), fstype: "ext4".into() });
        let c = with("root", json!({"kind": "9p", "tag": "rootfs", "readOnly": true})).unwrap();
        assert_eq!(c.root, Root::NineP { tag: "rootfs".into(), read_only: true });
        let c = with("root", json!({"kind": "virtiofs", "tag": "rootfs"})).unwrap();
        assert_eq!(c.root, Root::VirtioFs { tag: "rootfs".into(), read_only: false });
        let c =
            with("volumes", json!([{"mountPath": "/v", "kind": "virtiofs", "tag": "v", "readOnly": true}])).unwrap();
        assert_eq!(c.volumes[0].kind, VolumeKind::VirtioFs { tag: "v".into(), read_only: true });
        assert_eq!(with("init", json!("auto")).unwrap().init, Init::Auto);
        assert_eq!(with("init", json!("/sbin/init")).unwrap().init, Init::Path("/sbin/init".into()));
    }

    #[test]
    fn minimal_document_gets_defaults() {
        let c = BootConfig::parse(r#"{"version": 1, "root": {"kind": "disk", "device": "root"}}"#).unwrap();
        assert!(c.volumes.is_empty() && c.env.is_empty() && c.network.is_none());
        assert_eq!(c.init, Init::Agent);
    }

    #[test]
    fn not_json_is_reported() {
        assert_eq!(BootConfig::parse("{").unwrap_err().path, "(document)");
        assert_eq!(BootConfig::parse("[]").unwrap_err().path, "(top level)");
    }
}
