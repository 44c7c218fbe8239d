//! OCI image archives made from files on hand: the sandbox image (Keelson's own pause process,
//! compiled by `build.rs` and embedded) and small images for air-gapped clusters and tests. An
//! archive is an OCI image layout in a tar (`oci-layout`, `index.json`, `blobs/sha256/…`) with
//! one uncompressed layer, as `ctr images import` takes it.

use serde_json::json;
use sha2::{Digest, Sha256};

/// The sandbox process, statically linked.
pub const PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/keelson-pause"));
/// The name the agent imports the sandbox image under and gives containerd as `sandbox_image`.
pub const PAUSE_IMAGE: &str = "registry.keelson.local/pause:1";

/// A file of an image's only layer.
pub struct File<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub contents: &'a [u8],
}

/// What an image is made of.
pub struct ImageSpec<'a> {
    /// A full reference, `host/path:tag`.
    pub name: &'a str,
    pub files: Vec<File<'a>>,
    /// Symbolic links (path, target).
    pub links: Vec<(&'a str, &'a str)>,
    pub entrypoint: Vec<&'a str>,
    pub cmd: Vec<&'a str>,
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    // A fixed time: the same files make the same digests.
    h.set_mtime(0);
    Ok(h)
}

/// The layer: the files, their parent directories and the links.
fn layer(spec: &ImageSpec<'_>) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let paths = spec.files.iter().map(|f| f.path).chain(spec.links.iter().map(|l| l.0));
    for p in paths {
        let p = p.trim_start_matches('/');
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            dirs.insert(p[..at + i].to_string());
            at += i + 1;
        }
    }
    for d in &dirs {
        let mut h = header(&format!("{d}/"), 0, 0o755, tar::EntryType::Directory)?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    for f in &spec.files {
        let mut h = header(f.path.trim_start_matches('/'), f.contents.len() as u64, f.mode, tar::EntryType::Regular)?;
        h.set_cksum();
        b.append(&h, f.contents)?;
    }
    for (path, target) in &spec.links {
        let mut h = header(path.trim_start_matches('/'), 0, 0o777, tar::EntryType::Symlink)?;
        h.set_link_name(target)?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    b.into_inner()
}

/// The image as an OCI layout archive.
pub fn archive(spec: &ImageSpec<'_>) -> std::io::Result<Vec<u8>> {
    let layer = layer(spec)?;
    let layer_digest = format!("sha256:{}", sha256(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": spec.entrypoint, "Cmd": spec.cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config_digest = format!("sha256:{}", sha256(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))?;
    let manifest_digest = format!("sha256:{}", sha256(&manifest));
    let tag = spec.name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": spec.name, "org.opencontainers.image.ref.name": tag},
        }],
    }))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = header(path, data.len() as u64, 0o644, tar::EntryType::Regular)?;
        h.set_cksum();
        b.append(&h, data)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for (digest, data) in [(&layer_digest, &layer), (&config_digest, &config), (&manifest_digest, &manifest)] {
        add(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), data)?;
    }
    b.into_inner()
}

/// The sandbox image.
pub fn pause_archive() -> std::io::Result<Vec<u8>> {
    archive(&ImageSpec {
        name: PAUSE_IMAGE,
        files: vec![File { path: "/pause", mode: 0o755, contents: PAUSE_BINARY }],
        links: Vec::new(),
        entrypoint: vec!["/pause"],
        cmd: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Whether an ELF64 executable names a dynamic loader (a PT_INTERP program header).
    fn has_interpreter(elf: &[u8]) -> bool {
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        let (size, count) = (u16_at(0x36), u16_at(0x38));
        (0..count).any(|i| u32::from_le_bytes(elf[phoff + i * size..phoff + i * size + 4].try_into().unwrap()) == 3)
    }

    #[test]
    fn an_archive_is_an_oci_layout_whose_digests_match() {
        let bytes = pause_archive().unwrap();
        assert_eq!(bytes, pause_archive().unwrap(), "the same files make the same archive");
        let mut entries = std::collections::BTreeMap::new();
        for e in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            entries.insert(path, data);
        }
        for (path, data) in &entries {
            if let Some(digest) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(&sha256(data), digest, "{path}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], PAUSE_IMAGE);
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let manifest: serde_json::Value =
            serde_json::from_slice(&entries[&format!("blobs/sha256/{manifest_digest}")]).unwrap();
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let layer = &entries[&format!("blobs/sha256/{layer_digest}")];
        let mut found = false;
        for e in tar::Archive::new(layer.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_string_lossy() == "pause" {
                assert_eq!(e.header().mode().unwrap() & 0o777, 0o755);
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                // A static executable: no interpreter for a libc the image does not have.
                assert_eq!(&data[..4], b"\x7fELF");
                assert!(!has_interpreter(&data), "the sandbox process must be static");
                found = true;
            }
        }
        assert!(found, "the layer holds /pause");
    }
}
