//! Filesystem operations of `core.fs.request`, run on the blocking pool.
//!
//! Paths are guest paths: absolute, or relative to the sandbox workdir. The agent runs as
//! root inside its own VM, so there is no jail to enforce; what matters is clear errors
//! ("open /tmp/x: No such file or directory"), shown to users verbatim by the SDK.

use std::collections::HashMap;
use std::fs::{self, File, Metadata, ReadDir};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use ksb_protocol::messages::{FsEntry, FsOp, FsResponse, FsResponseData, OpenOptions, SetAttrs};

use crate::sys::{cstring, cvt};
use crate::users::UserDb;

/// Entries returned by one `ReadDir` when the host gives no limit.
pub const READDIR_DEFAULT: usize = 256;
/// First handle number (matches what the SDK has been seen to receive).
pub const FIRST_HANDLE: u64 = 100;

/// Turns a request path into an absolute, lexically normalised path.
pub fn guest_path(raw: &str, base: &Path) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("path is empty".into());
    }
    if raw.contains('\0') {
        return Err(format!("path {raw:?} contains a NUL byte"));
    }
    let joined = if raw.starts_with('/') { PathBuf::from(raw) } else { base.join(raw) };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

fn kind_of(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

pub fn entry(path: &Path, m: &Metadata) -> FsEntry {
    FsEntry {
        path: path.to_string_lossy().into_owned(),
        kind: kind_of(m).into(),
        size: m.len(),
        mode: m.mode() & 0o7777,
        modified: Some(m.mtime()),
        uid: m.uid(),
        gid: m.gid(),
        atime: Some(m.atime()),
        mtime: Some(m.mtime()),
    }
}

enum HandleKind {
    File(Arc<File>),
    Dir(Arc<Mutex<ReadDir>>),
}

struct Handle {
    owner: u32,
    path: PathBuf,
    kind: HandleKind,
}

/// Open file and directory handles, each owned by the request id that opened it (for the
/// per-client cleanup on `core.relay.client.disconnected`).
#[derive(Default)]
pub struct Handles {
    next: u64,
    map: HashMap<u64, Handle>,
}

impl Handles {
    fn insert(&mut self, owner: u32, path: PathBuf, kind: HandleKind) -> u64 {
        if self.next < FIRST_HANDLE {
            self.next = FIRST_HANDLE;
        }
        let h = self.next;
        self.next += 1;
        self.map.insert(h, Handle { owner, path, kind });
        h
    }

    pub fn file(&self, h: u64) -> Result<(Arc<File>, PathBuf), String> {
        match self.map.get(&h) {
            Some(Handle { kind: HandleKind::File(f), path, .. }) => Ok((f.clone(), path.clone())),
            Some(_) => Err(format!("handle {h} is a directory")),
            None => Err(format!("unknown handle {h}")),
        }
    }

    pub fn close(&mut self, h: u64) -> Result<(), String> {
        self.map.remove(&h).map(drop).ok_or_else(|| format!("unknown handle {h}"))
    }

    /// Closes every handle opened by a request id in `[start, end)`; returns how many.
    pub fn close_owned_by(&mut self, start: u32, end: u32) -> usize {
        let before = self.map.len();
        self.map.retain(|_, h| !(start..end).contains(&h.owner));
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

pub type SharedHandles = Arc<Mutex<Handles>>;

fn ctx<'a>(op: &'a str, path: &'a Path) -> impl Fn(io::Error) -> String + 'a {
    move |e| format!("{op} {}: {e}", path.display())
}

fn ok(data: Option<FsResponseData>) -> FsResponse {
    FsResponse { ok: true, error: None, data }
}

pub fn failed(error: String) -> FsResponse {
    FsResponse { ok: false, error: Some(error), data: None }
}

fn chown_to(path: &Path, user: Option<&str>, follow: bool) -> Result<(), String> {
    let Some(spec) = user else { return Ok(()) };
    let id = UserDb::load(Path::new("/")).resolve(spec).map_err(|e| e.to_string())?;
    let r = if follow {
        std::os::unix::fs::chown(path, Some(id.uid), Some(id.gid))
    } else {
        std::os::unix::fs::lchown(path, Some(id.uid), Some(id.gid))
    };
    r.map_err(ctx("chown", path))
}

fn copy_recursive(src: &Path, dst: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(src)?;
    if m.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else if m.is_dir() {
        fs::create_dir(dst)?;
        fs::set_permissions(dst, m.permissions())?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_recursive(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(src, dst).map(drop)
    }
}

fn apply_attrs(path: &Path, follow: bool, file: Option<&File>, a: &SetAttrs) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    if let Some(mode) = a.mode {
        match file {
            Some(f) => f.set_permissions(fs::Permissions::from_mode(mode)),
            None => fs::set_permissions(path, fs::Permissions::from_mode(mode)),
        }
        .map_err(ctx("chmod", path))?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        match (file, follow) {
            (Some(f), _) => std::os::unix::fs::fchown(f, a.uid, a.gid),
            (None, true) => std::os::unix::fs::chown(path, a.uid, a.gid),
            (None, false) => std::os::unix::fs::lchown(path, a.uid, a.gid),
        }
        .map_err(ctx("chown", path))?;
    }
    if let Some(size) = a.size {
        match file {
            Some(f) => f.set_len(size),
            None => fs::OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(size)),
        }
        .map_err(ctx("truncate", path))?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        let ts = |t: Option<i64>| match t {
            Some(s) => libc::timespec { tv_sec: s, tv_nsec: 0 },
            None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        };
        let times = [ts(a.atime), ts(a.mtime)];
        let r = match file {
            // SAFETY: valid fd and a two-element timespec array.
            Some(f) => cvt(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) }),
            None => {
                let c = cstring(path).map_err(ctx("utimes", path))?;
                let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
                // SAFETY: NUL-terminated path and a two-element timespec array.
                cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) })
            }
        };
        r.map_err(ctx("utimes", path))?;
    }
    Ok(())
}

fn open_file(path: &Path, o: &OpenOptions) -> Result<File, String> {
    let existed = fs::symlink_metadata(path).is_ok();
    let mut opts = fs::OpenOptions::new();
    // A handle opened with no access flag at all is read-only, like open(2) with O_RDONLY.
    let read = o.read || !(o.write || o.append);
    opts.read(read).write(o.write).append(o.append).truncate(o.truncate).create(o.create).create_new(o.create_new);
    opts.mode(o.mode.unwrap_or(0o644));
    opts.custom_flags(libc::O_CLOEXEC);
    let file = opts.open(path).map_err(ctx("open", path))?;
    if !existed {
        chown_to(path, o.user.as_deref(), true)?;
    }
    Ok(file)
}

/// Runs an operation that completes with one `core.fs.response` (everything but Read/Write).
pub fn execute(op: &FsOp, owner: u32, base: &Path, handles: &SharedHandles) -> FsResponse {
    match execute_inner(op, owner, base, handles) {
        Ok(data) => ok(data),
        Err(e) => failed(e),
    }
}

fn lock(handles: &SharedHandles) -> std::sync::MutexGuard<'_, Handles> {
    handles.lock().unwrap_or_else(|p| p.into_inner())
}

fn execute_inner(
    op: &FsOp,
    owner: u32,
    base: &Path,
    handles: &SharedHandles,
) -> Result<Option<FsResponseData>, String> {
    let p = |raw: &str| guest_path(raw, base);
    Ok(match op {
        FsOp::Stat { path, follow_symlink } => {
            let path = p(path)?;
            let m = if *follow_symlink { fs::metadata(&path) } else { fs::symlink_metadata(&path) };
            Some(FsResponseData::Stat(entry(&path, &m.map_err(ctx("stat", &path))?)))
        }
        FsOp::List { path } => {
            let path = p(path)?;
            let mut out = Vec::new();
            for e in fs::read_dir(&path).map_err(ctx("list", &path))? {
                let e = e.map_err(ctx("list", &path))?;
                let child = path.join(e.file_name());
                if let Ok(m) = fs::symlink_metadata(&child) {
                    out.push(entry(&child, &m));
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Some(FsResponseData::List(out))
        }
        FsOp::Mkdir { path, mode, user } => {
            let path = p(path)?;
            let mut b = fs::DirBuilder::new();
            b.recursive(true).mode(mode.unwrap_or(0o755));
            b.create(&path).map_err(ctx("mkdir", &path))?;
            chown_to(&path, user.as_deref(), true)?;
            None
        }
        FsOp::Remove { path } => {
            let path = p(path)?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    return Err(format!("remove {}: is a directory (use RemoveDir)", path.display()))
                }
                _ => fs::remove_file(&path).map_err(ctx("remove", &path))?,
            }
            None
        }
        FsOp::RemoveDir { path, recursive } => {
            let path = p(path)?;
            if path == Path::new("/") {
                return Err("refusing to remove /".into());
            }
            if *recursive { fs::remove_dir_all(&path) } else { fs::remove_dir(&path) }
                .map_err(ctx("remove directory", &path))?;
            None
        }
        FsOp::Copy { src, dst } => {
            let (src, dst) = (p(src)?, p(dst)?);
            copy_recursive(&src, &dst).map_err(|e| format!("copy {} to {}: {e}", src.display(), dst.display()))?;
            None
        }
        FsOp::Rename { src, dst } => {
            let (src, dst) = (p(src)?, p(dst)?);
            fs::rename(&src, &dst).map_err(|e| format!("rename {} to {}: {e}", src.display(), dst.display()))?;
            None
        }
        FsOp::OpenFile { path, options } => {
            let path = p(path)?;
            let file = open_file(&path, options)?;
            let h = lock(handles).insert(owner, path, HandleKind::File(Arc::new(file)));
            Some(FsResponseData::Handle(h))
        }
        FsOp::OpenDir { path } => {
            let path = p(path)?;
            let rd = fs::read_dir(&path).map_err(ctx("open directory", &path))?;
            let h = lock(handles).insert(owner, path, HandleKind::Dir(Arc::new(Mutex::new(rd))));
            Some(FsResponseData::Handle(h))
        }
        FsOp::CloseHandle { handle } => {
            lock(handles).close(*handle)?;
            None
        }
        FsOp::ReadDir { handle, limit } => {
            let (rd, dir) = match lock(handles).map.get(handle) {
                Some(Handle { kind: HandleKind::Dir(rd), path, .. }) => (rd.clone(), path.clone()),
                Some(_) => return Err(format!("handle {handle} is not a directory")),
                None => return Err(format!("unknown handle {handle}")),
            };
            let limit = limit.map(|l| l as usize).filter(|l| *l > 0).unwrap_or(READDIR_DEFAULT);
            let mut rd = rd.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            while out.len() < limit {
                match rd.next() {
                    None => break,
                    Some(Err(e)) => return Err(ctx("read directory", &dir)(e)),
                    Some(Ok(e)) => {
                        let child = dir.join(e.file_name());
                        if let Ok(m) = fs::symlink_metadata(&child) {
                            out.push(entry(&child, &m));
                        }
                    }
                }
            }
            Some(FsResponseData::List(out))
        }
        FsOp::FStat { handle } => {
            let (kind_file, path) = match lock(handles).map.get(handle) {
                Some(Handle { kind: HandleKind::File(f), path, .. }) => (Some(f.clone()), path.clone()),
                Some(h) => (None, h.path.clone()),
                None => return Err(format!("unknown handle {handle}")),
            };
            let m = match kind_file {
                Some(f) => f.metadata(),
                None => fs::metadata(&path),
            }
            .map_err(ctx("stat", &path))?;
            Some(FsResponseData::Stat(entry(&path, &m)))
        }
        FsOp::FSetStat { handle, attrs } => {
            let (file, path) = lock(handles).file(*handle)?;
            apply_attrs(&path, true, Some(&file), attrs)?;
            None
        }
        FsOp::SetStat { path, follow_symlink, attrs } => {
            let path = p(path)?;
            apply_attrs(&path, *follow_symlink, None, attrs)?;
            None
        }
        FsOp::RealPath { path } => {
            let path = p(path)?;
            let real = fs::canonicalize(&path).map_err(ctx("resolve", &path))?;
            Some(FsResponseData::Path(real.to_string_lossy().into_owned()))
        }
        FsOp::ReadLink { path } => {
            let path = p(path)?;
            let target = fs::read_link(&path).map_err(ctx("readlink", &path))?;
            Some(FsResponseData::Path(target.to_string_lossy().into_owned()))
        }
        FsOp::Symlink { target, link_path, user } => {
            let link = p(link_path)?;
            std::os::unix::fs::symlink(target, &link).map_err(ctx("symlink", &link))?;
            chown_to(&link, user.as_deref(), false)?;
            None
        }
        FsOp::Read { .. } | FsOp::Write { .. } => return Err("streaming operation dispatched as simple".into()),
    })
}

/// Reads up to `buf.len()` bytes at `offset`, retrying short reads until EOF.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_against_the_workdir() {
        let base = Path::new("/app");
        assert_eq!(guest_path("/tmp/x", base).unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(guest_path("data/x", base).unwrap(), PathBuf::from("/app/data/x"));
        assert_eq!(guest_path("../../../etc", base).unwrap(), PathBuf::from("/etc"));
        assert_eq!(guest_path("/a/./b//c/..", base).unwrap(), PathBuf::from("/a/b"));
        assert!(guest_path("", base).is_err());
        assert!(guest_path("a\0b", base).is_err());
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ksb-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn run(op: FsOp, handles: &SharedHandles) -> FsResponse {
        execute(&op, 1, Path::new("/"), handles)
    }

    #[test]
    fn mkdir_copy_rename_list_remove() {
        let d = tmp("ops");
        let hs = SharedHandles::default();
        let s = |p: &str| d.join(p).to_string_lossy().into_owned();
        assert!(run(FsOp::Mkdir { path: s("a/b"), mode: None, user: None }, &hs).ok);
        fs::write(d.join("a/b/f"), "hi").unwrap();
        assert!(run(FsOp::Copy { src: s("a"), dst: s("c") }, &hs).ok);
        assert_eq!(fs::read_to_string(d.join("c/b/f")).unwrap(), "hi");
        assert!(run(FsOp::Rename { src: s("c/b/f"), dst: s("c/g") }, &hs).ok);
        match run(FsOp::List { path: s("c") }, &hs).data {
            Some(FsResponseData::List(l)) => {
                let names: Vec<_> = l.iter().map(|e| (e.path.clone(), e.kind.clone())).collect();
                assert_eq!(names, vec![(s("c/b"), "dir".into()), (s("c/g"), "file".into())]);
            }
            other => panic!("{other:?}"),
        }
        let r = run(FsOp::Remove { path: s("c") }, &hs);
        assert!(!r.ok && r.error.unwrap().contains("is a directory"));
        assert!(!run(FsOp::RemoveDir { path: s("c"), recursive: false }, &hs).ok);
        assert!(run(FsOp::RemoveDir { path: s("c"), recursive: true }, &hs).ok);
        let r = run(FsOp::Stat { path: s("c"), follow_symlink: true }, &hs);
        assert!(r.error.unwrap().starts_with(&format!("stat {}: No such file", s("c"))));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn handles_belong_to_their_opener() {
        let d = tmp("handles");
        let hs = SharedHandles::default();
        let path = d.join("f").to_string_lossy().into_owned();
        let opts = OpenOptions { write: true, create: true, ..OpenOptions::default() };
        let h = match execute(&FsOp::OpenFile { path: path.clone(), options: opts }, 5, Path::new("/"), &hs).data {
            Some(FsResponseData::Handle(h)) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!(h, FIRST_HANDLE);
        let dir = execute(&FsOp::OpenDir { path: d.to_string_lossy().into() }, 9, Path::new("/"), &hs);
        assert!(dir.ok);
        assert_eq!(lock(&hs).close_owned_by(1, 6), 1);
        assert_eq!(lock(&hs).len(), 1);
        assert!(!run(FsOp::CloseHandle { handle: h }, &hs).ok);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn readdir_pages_and_symlinks_resolve() {
        let d = tmp("readdir");
        for i in 0..5 {
            fs::write(d.join(format!("f{i}")), "").unwrap();
        }
        let hs = SharedHandles::default();
        let s = |p: &str| d.join(p).to_string_lossy().into_owned();
        assert!(run(FsOp::Symlink { target: "f0".into(), link_path: s("l"), user: None }, &hs).ok);
        assert_eq!(run(FsOp::ReadLink { path: s("l") }, &hs).data, Some(FsResponseData::Path("f0".into())));
        let h = match run(FsOp::OpenDir { path: s("") }, &hs).data {
            Some(FsResponseData::Handle(h)) => h,
            other => panic!("{other:?}"),
        };
        let mut total = 0;
        loop {
            match run(FsOp::ReadDir { handle: h, limit: Some(4) }, &hs).data {
                Some(FsResponseData::List(l)) if l.is_empty() => break,
                Some(FsResponseData::List(l)) => {
                    assert!(l.len() <= 4);
                    total += l.len()
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 6);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn setstat_changes_mode_size_and_times() {
        let d = tmp("setstat");
        let f = d.join("f");
        fs::write(&f, "hello").unwrap();
        let hs = SharedHandles::default();
        let attrs = SetAttrs { mode: Some(0o600), size: Some(2), mtime: Some(1_000_000), ..SetAttrs::default() };
        assert!(run(FsOp::SetStat { path: f.to_string_lossy().into(), follow_symlink: true, attrs }, &hs).ok);
        let m = fs::metadata(&f).unwrap();
        assert_eq!((m.mode() & 0o777, m.len(), m.mtime()), (0o600, 2, 1_000_000));
        fs::remove_dir_all(d).unwrap();
    }
}
