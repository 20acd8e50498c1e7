//! Freezes the protocol surface: `schema/gen-7-surface.txt` must equal `schema::surface()`.
//! After an intended change: `UPDATE_SNAPSHOT=1 cargo test -p kubesandbox-agent-protocol --test snapshot`.

use std::path::PathBuf;

#[test]
fn protocol_surface_matches_the_committed_snapshot() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema/gen-7-surface.txt");
    let current = ksb_protocol::schema::surface();
    if std::env::var_os("UPDATE_SNAPSHOT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_SNAPSHOT=1 to create it", path.display()));
    if committed != current {
        panic!(
            "protocol surface changed; if intended, rerun with UPDATE_SNAPSHOT=1 and commit.\n--- committed\n{committed}\n--- current\n{current}"
        );
    }
}
