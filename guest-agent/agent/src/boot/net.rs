//! Network setup from `boot.json`'s `network` with the classic socket ioctls (IPv4 only):
//! loopback up, each interface found by MAC gets its addresses, is brought up, and the
//! gateway becomes the default route; `dns` goes to `/etc/resolv.conf`.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use super::config::Network;
use crate::sys::cvt;
use crate::{log_info, log_warn};

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// `10.0.2.15/24` → (address, netmask).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Some((addr, Ipv4Addr::from(mask)))
}

/// Name of the interface whose `/sys/class/net/*/address` is `mac`.
fn interface_by_mac(mac: &str) -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/net").ok()?;
    for entry in dir.flatten() {
        let addr = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(mac) {
            return entry.file_name().into_string().ok();
        }
    }
    None
}

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is the documented idiom.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

impl Socket {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }).map(Socket)
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid ifreq for these SIOC* requests.
        cvt(unsafe { libc::ioctl(self.0, request as _, req as *mut libc::ifreq) }).map(drop)
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut req = ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: the union member written by SIOCGIFFLAGS.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_addr(&self, name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut req)?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        self.ioctl(libc::SIOCSIFNETMASK, &mut req)
    }

    fn set_flags(&self, name: &str, up: bool) -> io::Result<()> {
        let mut req = ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        let bits = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: the union member written by SIOCGIFFLAGS.
        unsafe {
            if up {
                req.ifr_ifru.ifru_flags |= bits
            } else {
                req.ifr_ifru.ifru_flags &= !bits
            }
        };
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut req = ifreq(name);
        // SAFETY: sockaddr is plain old data; all-zero is valid.
        let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = hw;
        self.ioctl(libc::SIOCSIFHWADDR, &mut req)
    }

    fn default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        // SAFETY: rtentry is plain old data; all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: `rt` is a valid rtentry for SIOCADDRT.
        cvt(unsafe { libc::ioctl(self.0, libc::SIOCADDRT as _, &mut rt as *mut libc::rtentry) }).map(drop)
    }
}

/// Brings loopback up; errors are logged, never fatal (a sandbox without lo still works).
pub fn loopback_up() {
    match Socket::new().and_then(|s| s.set_up("lo")) {
        Ok(()) => {}
        Err(e) => log_warn!("loopback: {e}"),
    }
}

/// Configures `network`; `root` is the new root, for `/etc/resolv.conf`.
pub fn configure(network: &Network, root: &Path) -> io::Result<()> {
    let sock = Socket::new()?;
    for iface in &network.interfaces {
        let Some(name) = interface_by_mac(&iface.mac) else {
            log_warn!("network: no interface with MAC {}", iface.mac);
            continue;
        };
        for a in &iface.addresses {
            if let Some((addr, mask)) = parse_cidr(a) {
                sock.set_addr(&name, addr, mask)?;
            }
        }
        sock.set_up(&name)?;
        if let Some(gw) = iface.gateway.as_deref().and_then(|g| g.parse().ok()) {
            sock.default_route(gw)?;
        }
        log_info!("network: {name} ({}) {:?} via {:?}", iface.mac, iface.addresses, iface.gateway);
    }
    if !network.dns.is_empty() {
        let text: String = network.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        let path = root.join("etc/resolv.conf");
        // resolv.conf is often a dangling symlink into /run (systemd-resolved): replace it.
        let _ = std::fs::remove_file(&path);
        if let Err(e) = std::fs::write(&path, text) {
            log_warn!("network: cannot write {}: {e}", path.display());
        }
    }
    Ok(())
}

/// A forked guest's NIC: down (which drops the neighbours and routes learnt on the source's
/// network), the new MAC, its addresses, up, the default route again.
pub fn reconfigure(iface: &ksb_protocol::messages::ForkedInterface) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "bad MAC");
    let mac = parse_mac(&iface.mac).ok_or_else(bad)?;
    let name = interface_by_mac(&iface.old_mac)
        .or_else(|| interface_by_mac(&iface.mac))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface with MAC {}", iface.old_mac)))?;
    let sock = Socket::new()?;
    sock.set_flags(&name, false)?;
    sock.set_mac(&name, mac)?;
    for a in &iface.addresses {
        if let Some((addr, mask)) = parse_cidr(a) {
            sock.set_addr(&name, addr, mask)?;
        }
    }
    sock.set_flags(&name, true)?;
    if let Some(gw) = iface.gateway.as_deref().and_then(|g| g.parse().ok()) {
        match sock.default_route(gw) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    log_info!("network: {name} is now {} {:?} via {:?}", iface.mac, iface.addresses, iface.gateway);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("52:54:00:12:34:5f"), Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f]));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5g"), None);
    }

    #[test]
    fn parses_cidrs() {
        assert_eq!(parse_cidr("10.0.2.15/24"), Some(("10.0.2.15".parse().unwrap(), "255.255.255.0".parse().unwrap())));
        assert_eq!(parse_cidr("10.0.0.1/0").unwrap().1, Ipv4Addr::UNSPECIFIED);
        assert_eq!(parse_cidr("10.0.0.1/32").unwrap().1, Ipv4Addr::BROADCAST);
        assert_eq!(parse_cidr("10.0.0.1/33"), None);
        assert_eq!(parse_cidr("10.0.0.1"), None);
    }
}
