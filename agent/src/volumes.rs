//! A pod's volumes on its node, as kubelet sets them up: each under
//! `<pods dir>/<uid>/volumes/<plugin>/<name>` — emptyDir (a directory, or tmpfs for medium
//! Memory), hostPath (checked or created by its type), configMap, secret, downwardAPI and projected
//! (files written by an atomic writer: a timestamped directory, `..data` pointing at it, one link
//! per file into `..data`, so a reader sees all of an update or none of it), and
//! persistentVolumeClaim (the hostPath or local path of the bound PersistentVolume). A volume
//! that cannot be set up is a `MountError`, which leaves the pod ContainerCreating with
//! Kubernetes' FailedMount event.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;

use crate::podspec;
use crate::runtime::Mount;

/// Files of a configMap, secret or downwardAPI volume get this mode unless it says otherwise.
const DEFAULT_MODE: i32 = 0o644;
/// A projected token's lifetime unless the projection names one (Kubernetes' default).
const TOKEN_EXPIRATION_SECONDS_DEFAULT: i64 = 3_600;

/// A volume that cannot be set up: its name and why.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

fn fail(v: &Volume, message: impl Into<String>) -> anyhow::Error {
    MountError { volume: v.name.clone(), message: message.into() }.into()
}

/// Where a pod's volumes live on the node.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

fn plugin_dir(v: &Volume) -> &'static str {
    if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        "kubernetes.io~other"
    }
}

/// The files of a volume, by their path inside it, with their modes.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// What a volume's files are made from beyond the pod.
pub struct Sources<'a> {
    pub client: &'a kube::Client,
    pub host_ip: &'a str,
    pub pod_ip: Option<&'a str>,
    pub allocatable: &'a BTreeMap<String, Quantity>,
    pub tokens: &'a crate::tokens::TokenManager,
}

fn keyed_files(
    v: &Volume,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: Option<i32>,
    what: &str,
    files: &mut Files,
) -> anyhow::Result<()> {
    let mode = mode.unwrap_or(DEFAULT_MODE) as u32;
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, bytes) in data {
                files.insert(k, (bytes, mode));
            }
        }
        Some(items) => {
            for item in items {
                let bytes = data
                    .get(&item.key)
                    .cloned()
                    .ok_or_else(|| fail(v, format!("{what}: key {:?} not found", item.key)))?;
                files.insert(item.path.clone(), (bytes, item.mode.map(|m| m as u32).unwrap_or(mode)));
            }
        }
    }
    Ok(())
}

async fn config_map_files(
    src: &Sources<'_>,
    ns: &str,
    v: &Volume,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: Option<i32>,
    files: &mut Files,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(src.client.clone(), ns);
    let Some(cm) = api.get_opt(name).await? else {
        return if optional { Ok(()) } else { Err(fail(v, format!("configmap \"{name}\" not found"))) };
    };
    let mut data: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, s)| (k, s.into_bytes())).collect();
    data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, b)| (k, b.0)));
    keyed_files(v, data, items, mode, &format!("configmap \"{name}\""), files)
}

async fn secret_files(
    src: &Sources<'_>,
    ns: &str,
    v: &Volume,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: Option<i32>,
    files: &mut Files,
) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(src.client.clone(), ns);
    let Some(s) = api.get_opt(name).await? else {
        return if optional { Ok(()) } else { Err(fail(v, format!("secret \"{name}\" not found"))) };
    };
    let mut data: BTreeMap<String, Vec<u8>> = s.data.unwrap_or_default().into_iter().map(|(k, b)| (k, b.0)).collect();
    data.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, s)| (k, s.into_bytes())));
    keyed_files(v, data, items, mode, &format!("secret \"{name}\""), files)
}

fn downward_files(
    src: &Sources<'_>,
    pod: &Pod,
    v: &Volume,
    items: &[DownwardAPIVolumeFile],
    mode: Option<i32>,
    files: &mut Files,
) -> anyhow::Result<()> {
    let mode = mode.unwrap_or(DEFAULT_MODE) as u32;
    let containers: Vec<&Container> = pod.spec.iter().flat_map(|s| s.containers.iter()).collect();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            podspec::pod_field(pod, src.host_ip, src.pod_ip, &f.field_path).map_err(|e| fail(v, e.0))?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let c = containers
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| fail(v, format!("container {name:?} not found for resourceFieldRef")))?;
            podspec::resource_field(c, &r.resource, r.divisor.as_ref(), src.allocatable).map_err(|e| fail(v, e.0))?
        } else {
            continue;
        };
        files.insert(item.path.clone(), (value.into_bytes(), item.mode.map(|m| m as u32).unwrap_or(mode)));
    }
    Ok(())
}

/// The files a configMap, secret, downwardAPI or projected volume holds now.
async fn files_of(src: &Sources<'_>, pod: &Pod, v: &Volume) -> anyhow::Result<Option<Files>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut files = Files::new();
    if let Some(c) = &v.config_map {
        config_map_files(src, ns, v, &c.name, c.items.as_deref(), c.optional == Some(true), c.default_mode, &mut files)
            .await?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        secret_files(src, ns, v, &name, s.items.as_deref(), s.optional == Some(true), s.default_mode, &mut files)
            .await?;
    } else if let Some(d) = &v.downward_api {
        downward_files(src, pod, v, d.items.as_deref().unwrap_or(&[]), d.default_mode, &mut files)?;
    } else if let Some(p) = &v.projected {
        for source in p.sources.iter().flatten() {
            if let Some(c) = &source.config_map {
                config_map_files(
                    src,
                    ns,
                    v,
                    &c.name,
                    c.items.as_deref(),
                    c.optional == Some(true),
                    p.default_mode,
                    &mut files,
                )
                .await?;
            }
            if let Some(s) = &source.secret {
                secret_files(
                    src,
                    ns,
                    v,
                    &s.name,
                    s.items.as_deref(),
                    s.optional == Some(true),
                    p.default_mode,
                    &mut files,
                )
                .await?;
            }
            if let Some(d) = &source.downward_api {
                downward_files(src, pod, v, d.items.as_deref().unwrap_or(&[]), p.default_mode, &mut files)?;
            }
            if let Some(t) = &source.service_account_token {
                let wanted = crate::tokens::Wanted {
                    namespace: ns,
                    account: pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default"),
                    pod_name: pod.metadata.name.as_deref().unwrap_or_default(),
                    pod_uid: pod.metadata.uid.as_deref().unwrap_or_default(),
                    audience: t.audience.as_deref().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(TOKEN_EXPIRATION_SECONDS_DEFAULT),
                };
                let token = src
                    .tokens
                    .token(src.client, &wanted)
                    .await
                    .map_err(|e| fail(v, format!("failed to fetch token: {e}")))?;
                let mode = p.default_mode.unwrap_or(DEFAULT_MODE) as u32;
                files.insert(t.path.clone(), (token.into_bytes(), mode));
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(files))
}

/// Writes `files` into `dir` atomically: a new timestamped directory, then `..data` switched to
/// it by a rename, then a link per top-level name; the previous directory is removed. Returns
/// whether anything changed.
pub fn write_atomically(dir: &Path, files: &Files) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if let Some(cur) = &current {
        if same_contents(&dir.join(cur), files) {
            return Ok(false);
        }
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%9f"));
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (path, (bytes, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    // One link per top-level name, into `..data`; names no longer there are removed.
    let tops: std::collections::BTreeSet<String> =
        files.keys().map(|p| p.split('/').next().unwrap_or(p).to_string()).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            std::fs::remove_file(e.path())?;
        }
    }
    if let Some(old) = current {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

fn same_contents(dir: &Path, files: &Files) -> bool {
    files.iter().all(|(p, (bytes, mode))| {
        let path = dir.join(p);
        std::fs::read(&path).is_ok_and(|b| &b == bytes)
            && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
    }) && count_files(dir) == files.len()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { count_files(&e.path()) } else { 1 })
        .sum()
}

fn is_mounted(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

fn mount_tmpfs(path: &Path, size: Option<&Quantity>) -> anyhow::Result<()> {
    if is_mounted(path) {
        return Ok(());
    }
    let mut options = String::from("mode=0777");
    if let Some(q) = size {
        let bytes = crate::machine::parse_quantity(&q.0, 1).map_err(anyhow::Error::msg)?;
        options.push_str(&format!(",size={bytes}"));
    }
    let out = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(path).output()?;
    if !out.status.success() {
        anyhow::bail!("mount tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sets up (or refreshes) every volume of the pod; their host paths by name.
pub async fn set_up(root: &Path, src: &Sources<'_>, pod: &Pod) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let base = pod_dir(root, uid).join("volumes");
    let mut paths = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = base.join(plugin_dir(v)).join(&v.name);
        let path = if let Some(e) = &v.empty_dir {
            std::fs::create_dir_all(&dir)?;
            if e.medium.as_deref() == Some("Memory") {
                mount_tmpfs(&dir, e.size_limit.as_ref()).map_err(|err| fail(v, format!("{err:#}")))?;
            } else {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            }
            dir
        } else if let Some(h) = &v.host_path {
            host_path(v, Path::new(&h.path), h.type_.as_deref().unwrap_or(""))?
        } else if let Some(c) = &v.persistent_volume_claim {
            claimed_path(src.client, pod, v, &c.claim_name).await?
        } else {
            match files_of(src, pod, v).await? {
                Some(files) => {
                    write_atomically(&dir, &files).map_err(|e| fail(v, format!("writing {}: {e}", dir.display())))?;
                    dir
                }
                None => return Err(fail(v, "this volume type is not supported by Keelson's agent")),
            }
        };
        paths.insert(v.name.clone(), path);
    }
    Ok(paths)
}

fn host_path(v: &Volume, path: &Path, kind: &str) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(path);
    let wrong = |what: &str| fail(v, format!("hostPath type check failed: {} is not a {what}", path.display()));
    match kind {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(path)?;
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            }
        }
        "Directory" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => return Err(wrong("directory")),
        "File" if !meta.as_ref().is_ok_and(|m| m.is_file()) => return Err(wrong("file")),
        "Socket" | "CharDevice" | "BlockDevice" if meta.is_err() => return Err(wrong(kind)),
        _ => {}
    }
    Ok(path.to_path_buf())
}

async fn claimed_path(client: &kube::Client, pod: &Pod, v: &Volume, claim: &str) -> anyhow::Result<PathBuf> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc =
        claims.get_opt(claim).await?.ok_or_else(|| fail(v, format!("persistentvolumeclaim \"{claim}\" not found")))?;
    let name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| fail(v, format!("persistentvolumeclaim \"{claim}\" is not bound")))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get_opt(&name).await?.ok_or_else(|| fail(v, format!("persistentvolume \"{name}\" not found")))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = spec.host_path {
        return host_path(v, Path::new(&h.path), h.type_.as_deref().unwrap_or("DirectoryOrCreate"));
    }
    if let Some(l) = spec.local {
        return host_path(v, Path::new(&l.path), "Directory");
    }
    Err(fail(v, format!("persistentvolume \"{name}\" is neither hostPath nor local")))
}

/// The container's mounts: each `volumeMount` at its path, `subPath` inside the volume.
pub fn mounts(c: &Container, paths: &BTreeMap<String, PathBuf>) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = paths.get(&m.name).ok_or_else(|| format!("volume {:?} is not one of the pod's volumes", m.name))?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|p| p == "..") || sub.starts_with('/') => {
                return Err(format!("subPath {sub:?} must be a relative path inside the volume"))
            }
            Some(sub) => {
                let p = base.join(sub);
                if std::fs::symlink_metadata(&p).is_err() {
                    std::fs::create_dir_all(&p).map_err(|e| format!("subPath {sub:?}: {e}"))?;
                }
                p
            }
            None => base.clone(),
        };
        out.push(Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only == Some(true),
        });
    }
    Ok(out)
}

/// Removes a pod's volumes: unmounts what was mounted for it, then its directory.
pub fn tear_down(root: &Path, uid: &str) -> std::io::Result<()> {
    let dir = pod_dir(root, uid);
    if !dir.exists() {
        return Ok(());
    }
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let out = std::process::Command::new("umount").arg(&m).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!("umount {m}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
    }
    std::fs::remove_dir_all(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(items: &[(&str, &str)]) -> Files {
        items.iter().map(|(p, c)| (p.to_string(), (c.as_bytes().to_vec(), 0o644))).collect()
    }

    #[test]
    fn the_atomic_writer_switches_all_files_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("v");
        assert!(write_atomically(&d, &files(&[("a", "1"), ("sub/b", "2")])).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("sub/b")).unwrap(), "2");
        assert!(std::fs::symlink_metadata(d.join("a")).unwrap().file_type().is_symlink());
        let first = std::fs::read_link(d.join("..data")).unwrap();
        assert!(!write_atomically(&d, &files(&[("a", "1"), ("sub/b", "2")])).unwrap(), "the same files change nothing");
        assert!(write_atomically(&d, &files(&[("a", "3")])).unwrap());
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(!d.join("sub").exists(), "a name no longer there is removed");
        assert!(!d.join(first).exists(), "the previous version is removed");
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = BTreeMap::new();
        paths.insert("data".to_string(), dir.path().to_path_buf());
        let c = |sub: &str| Container {
            volume_mounts: Some(vec![k8s_openapi::api::core::v1::VolumeMount {
                name: "data".into(),
                mount_path: "/d".into(),
                sub_path: Some(sub.into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let m = mounts(&c("x/y"), &paths).unwrap();
        assert_eq!(m[0].host_path, dir.path().join("x/y").display().to_string());
        assert!(mounts(&c("../escape"), &paths).is_err());
        assert!(mounts(&c("/abs"), &paths).is_err());
    }
}
