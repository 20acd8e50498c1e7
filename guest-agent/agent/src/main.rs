//! kubesandbox guest agent entry point. As PID 1: synchronous setup, optional init handoff,
//! then serve the agent port. `serve --socket PATH` runs the same server on a Unix socket for
//! development and tests (no setup, no mounts).

use std::os::fd::OwnedFd;
use std::process::exit;
use std::time::Duration;

use kubesandbox_agent::boot::{self, config::BootConfig};
use kubesandbox_agent::defaults::Defaults;
use kubesandbox_agent::server::{Ending, Timings};
use kubesandbox_agent::{handoff, log_error, log_info, serve_channel, sys, transport};

const USAGE: &str = "usage: kubesandbox-agent                      (as PID 1 in a sandbox VM)
       kubesandbox-agent serve --socket PATH [--relay-prelude] [--boot-config FILE]
       kubesandbox-agent check-boot-config FILE
       kubesandbox-agent --version";

fn main() {
    let start_ns = sys::boottime_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") => println!(
            "kubesandbox-agent {} (protocol generation {})",
            env!("CARGO_PKG_VERSION"),
            ksb_protocol::GENERATION
        ),
        Some("check-boot-config") => check_boot_config(args.get(1)),
        Some("serve") => dev_serve(&args[1..], start_ns),
        _ if std::process::id() == 1 => pid1(start_ns),
        _ => {
            eprintln!("{USAGE}");
            exit(2)
        }
    }
}

fn pid1(start_ns: u64) -> ! {
    sys::ensure_stdio();
    // Panics are bugs; say so on the console. One in a session task ends only that task.
    std::panic::set_hook(Box::new(|info| log_error!("panic: {info}")));
    let booted = boot::setup(start_ns).unwrap_or_else(|e| {
        log_error!("boot failed: {e}");
        sys::power_off(true)
    });
    sys::ensure_stdio();
    let handed_off = match &booted.init {
        Some(init) => match handoff::hand_off(init) {
            Ok(()) => true,
            Err(e) => {
                log_error!("cannot hand PID 1 to {}: {e}; the agent stays PID 1", init.display());
                false
            }
        },
        None => false,
    };
    let (port, path) = transport::open_port(Duration::from_secs(30)).unwrap_or_else(|e| {
        log_error!("{e}");
        sys::power_off(!handed_off)
    });
    log_info!("ready in {} ms of boot clock; serving {}", sys::boottime_ns() / 1_000_000, path.display());
    let timings = Timings { boot_time_ns: start_ns, init_time_ns: booted.init_time_ns };
    let served =
        std::panic::catch_unwind(move || serve_channel(port, transport::Kind::SerialPort, booted.defaults, timings));
    match served {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log_error!("agent runtime: {e}"),
        Err(_) => log_error!("agent runtime panicked; powering off"),
    }
    sys::power_off(!handed_off)
}

fn check_boot_config(path: Option<&String>) {
    let Some(path) = path else {
        eprintln!("{USAGE}");
        exit(2)
    };
    match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| BootConfig::parse(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => println!("{c:#?}"),
        Err(e) => {
            eprintln!("{path}: {e}");
            exit(1)
        }
    }
}

fn dev_serve(args: &[String], start_ns: u64) {
    let mut socket = None;
    let mut prelude = false;
    let mut defaults = Defaults::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = it.next().cloned(),
            "--relay-prelude" => prelude = true,
            "--boot-config" => {
                let path = it.next().cloned().unwrap_or_default();
                let c = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| BootConfig::parse(&t).map_err(|e| e.to_string()))
                    .unwrap_or_else(|e| {
                        eprintln!("{path}: {e}");
                        exit(1)
                    });
                defaults = Defaults::new(&c.env, c.workdir, c.user, c.shell);
            }
            _ => {
                eprintln!("{USAGE}");
                exit(2)
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("{USAGE}");
        exit(2)
    };
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap_or_else(|e| {
        eprintln!("bind {socket}: {e}");
        exit(1)
    });
    log_info!("serving on {socket}");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if prelude {
            // What a relay sends a new client before the guest's core.ready: its id range.
            use std::io::Write;
            let mut p = 0u32.to_be_bytes().to_vec();
            p.extend_from_slice(&(u32::MAX / 128).to_be_bytes());
            if conn.write_all(&p).is_err() {
                continue;
            }
        }
        let file = std::fs::File::from(OwnedFd::from(conn));
        let timings = Timings { boot_time_ns: start_ns, init_time_ns: 0 };
        let defaults = defaults.clone();
        // One thread (and runtime) per connection, like separate relay clients.
        std::thread::spawn(move || match serve_channel(file, transport::Kind::Stream, defaults, timings) {
            Ok(Ending::Shutdown) => exit(0),
            Ok(Ending::Closed) => log_info!("client disconnected"),
            Err(e) => log_error!("{e}"),
        });
    }
}
