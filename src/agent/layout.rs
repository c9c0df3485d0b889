//! Where the kubelet puts a pod's volumes on its node, as the kubelet's own
//! source says (Kubernetes v1.32). The agent reads and writes volume data
//! there; the tests lay out directories by these same functions' rules
//! (docs/agent.md lists them with the source lines), so a difference from
//! the real kubelet is a bug in this file and its documentation, never a
//! hidden assumption of a test.
//!
//! - `pkg/kubelet/kubelet_getters.go`: `getPodDir` = `<root>/pods/<pod uid>`;
//!   `getPodVolumesDir` = `<pod dir>/volumes`; `getPodVolumeDevicesDir` =
//!   `<pod dir>/volumeDevices`; `getPodVolumeDir(uid, plugin, volume)` =
//!   `<volumes dir>/<plugin, escaped>/<volume>`.
//! - `pkg/util/strings/escape.go` `EscapeQualifiedName`: `/` becomes `~`
//!   (`kubernetes.io/csi` → `kubernetes.io~csi`).
//! - `pkg/volume/csi/csi_mounter.go` `GetPath`: a CSI filesystem volume is
//!   mounted at `<pod volume dir>/mount`, the volume named by the PV.
//! - `pkg/volume/local/local.go`, `pkg/volume/nfs/nfs.go`: local and NFS
//!   volumes are mounted at the pod volume dir itself (plugins
//!   `kubernetes.io/local-volume`, `kubernetes.io/nfs`).
//! - `pkg/volume/util/volumepathhandler` and `pkg/volume/csi/csi_block.go`:
//!   a raw block volume appears to the pod as `<pod dir>/volumeDevices/
//!   <plugin, escaped>/<PV name>` (a symlink to the device; tests lay out
//!   an image file there).
//! - hostPath PVs are not mounted under the pod directory: the data is the
//!   path on the node, read through `--host-root`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// A persistent volume as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A directory the kubelet mounted for the pod.
    Filesystem { plugin: Plugin },
    /// A raw block device (`volumeMode: Block`).
    Block { plugin: Plugin },
}

/// The volume plugins the agent knows the layout of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugin {
    Csi,
    Local,
    Nfs,
    /// The data is `path` on the node.
    HostPath {
        path: String,
    },
}

impl Plugin {
    /// The plugin's qualified name, escaped as the kubelet names its
    /// directory (`EscapeQualifiedName`).
    fn dir(&self) -> &'static str {
        match self {
            Plugin::Csi => "kubernetes.io~csi",
            Plugin::Local => "kubernetes.io~local-volume",
            Plugin::Nfs => "kubernetes.io~nfs",
            Plugin::HostPath { .. } => "kubernetes.io~host-path",
        }
    }
}

/// The volume a PersistentVolume object describes.
pub fn volume_of(pv: &Value) -> Result<Volume> {
    let name = pv
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let spec = pv.get("spec").cloned().unwrap_or(Value::Null);
    let plugin = if spec.get("csi").is_some() {
        Plugin::Csi
    } else if spec.get("local").is_some() {
        Plugin::Local
    } else if spec.get("nfs").is_some() {
        Plugin::Nfs
    } else if let Some(p) = spec.pointer("/hostPath/path").and_then(Value::as_str) {
        Plugin::HostPath { path: p.into() }
    } else {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "PersistentVolume {name} uses a volume plugin the agent does not know \
                 (it reads csi, local, nfs and hostPath volumes)"
            ),
        )
        .with_guidance("back the volume up with `drctl backup volume --path` on its node"));
    };
    Ok(match spec.get("volumeMode").and_then(Value::as_str) {
        Some("Block") => Volume::Block { plugin },
        _ => Volume::Filesystem { plugin },
    })
}

/// Where `pv`'s data is on the node for the pod `pod_uid`, under the
/// kubelet's root (and, for hostPath, the host's root).
pub fn data_path(
    kubelet_root: &Path,
    host_root: &Path,
    pod_uid: &str,
    pv: &str,
    volume: &Volume,
) -> PathBuf {
    let pod = kubelet_root.join("pods").join(pod_uid);
    match volume {
        Volume::Filesystem {
            plugin: Plugin::HostPath { path },
        } => host_root.join(path.trim_start_matches('/')),
        Volume::Filesystem {
            plugin: plugin @ Plugin::Csi,
        } => pod
            .join("volumes")
            .join(plugin.dir())
            .join(pv)
            .join("mount"),
        Volume::Filesystem { plugin } => pod.join("volumes").join(plugin.dir()).join(pv),
        Volume::Block { plugin } => pod.join("volumeDevices").join(plugin.dir()).join(pv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_follow_the_kubelet() {
        let root = Path::new("/var/lib/kubelet");
        let host = Path::new("/host");
        let csi =
            volume_of(&json!({"metadata": {"name": "pv-1"}, "spec": {"csi": {"driver": "x"}}}))
                .unwrap();
        assert_eq!(
            data_path(root, host, "u-1", "pv-1", &csi),
            Path::new("/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/pv-1/mount")
        );
        let block = volume_of(&json!({"spec": {"csi": {}, "volumeMode": "Block"}})).unwrap();
        assert_eq!(
            data_path(root, host, "u-1", "pv-2", &block),
            Path::new("/var/lib/kubelet/pods/u-1/volumeDevices/kubernetes.io~csi/pv-2")
        );
        let local = volume_of(&json!({"spec": {"local": {"path": "/mnt/disks/a"}}})).unwrap();
        assert_eq!(
            data_path(root, host, "u-1", "pv-3", &local),
            Path::new("/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~local-volume/pv-3")
        );
        let nfs = volume_of(&json!({"spec": {"nfs": {"server": "s", "path": "/e"}}})).unwrap();
        assert_eq!(
            data_path(root, host, "u-1", "pv-4", &nfs),
            Path::new("/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~nfs/pv-4")
        );
        let hp = volume_of(&json!({"spec": {"hostPath": {"path": "/srv/data"}}})).unwrap();
        assert_eq!(
            data_path(root, host, "u-1", "pv-5", &hp),
            Path::new("/host/srv/data")
        );
        let err =
            volume_of(&json!({"metadata": {"name": "pv-6"}, "spec": {"iscsi": {}}})).unwrap_err();
        assert!(err.what().contains("pv-6"), "{err}");
    }
}
