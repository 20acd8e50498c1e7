//! Kernel modules listed by the boot-image builder in `/lib/modules/kubesandbox.order`: one
//! module path per line, dependency order, loaded with `finit_module(2)`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{log_debug, log_warn};

pub const ORDER_FILE: &str = "/lib/modules/kubesandbox.order";

/// Lines of the order file that name modules (comments and blanks skipped).
pub fn parse_order(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

fn finit_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let compressed = matches!(path.extension().and_then(|e| e.to_str()), Some("xz" | "zst" | "gz"));
    let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    // SAFETY: valid fd and a NUL-terminated empty parameter string.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), flags) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // Already loaded (or built in): nothing to do.
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(err)
}

/// Loads every listed module; a missing order file means a kernel with everything built in.
/// Failures are logged and skipped: a missing optional driver (9p without 9p volumes) must not
/// stop the boot; a missing essential one shows up as a missing device with a clear message.
pub fn load_all(order_file: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(order_file) else {
        log_debug!("no {}: not loading modules", order_file.display());
        return 0;
    };
    let mut loaded = 0;
    for line in parse_order(&text) {
        match finit_module(Path::new(line)) {
            Ok(()) => loaded += 1,
            Err(e) => log_warn!("module {line}: {e}"),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_file_skips_comments_and_blanks() {
        let text = "# generated\n/lib/modules/6.1/kernel/drivers/virtio/virtio_ring.ko\n\n  /x/virtio.ko  \n";
        assert_eq!(parse_order(text), vec!["/lib/modules/6.1/kernel/drivers/virtio/virtio_ring.ko", "/x/virtio.ko"]);
    }
}
