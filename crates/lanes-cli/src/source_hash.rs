// Shared by build.rs (`include!`) and the binary: the hash of the workspace's
// sources that a build embeds and `lanes verify` recomputes.
//
// What counts as source: every `.rs`, `.toml`, `.cu`, `.cuh` under `crates/` (the
// crates' code, build scripts, manifests, kernels), plus the root `Cargo.toml` and
// `Cargo.lock`. Files are visited in sorted order of their `/`-separated relative
// paths; the hash covers each path and its bytes.

/// SHA-256 of the workspace sources under `root`, as 64 hex digits, and the
/// number of files hashed.
pub fn hash_sources(root: &std::path::Path) -> std::io::Result<(String, usize)> {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    collect_sources(root, &root.join("crates"), &mut files)?;
    for top in ["Cargo.toml", "Cargo.lock"] {
        if root.join(top).is_file() {
            files.push(top.to_string());
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for rel in &files {
        let bytes = std::fs::read(root.join(rel))?;
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, files.len()))
}

fn collect_sources(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<String>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect_sources(root, &path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("rs" | "toml" | "cu" | "cuh")) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}
