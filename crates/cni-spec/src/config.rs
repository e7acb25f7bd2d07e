//! The network configuration the runtime passes on stdin.
//!
//! Parsing is strict about types (a wrong type is code 6, "failed to decode") and
//! explains every semantic problem (code 7, "invalid network config").

use crate::error::{code, CniError};
use crate::version::{self, Version};
use serde::Deserialize;
use serde_json::Value;

/// One attachment named in a GC request.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// podnet-cni's network configuration: the spec's keys plus podnet's own.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Node bridge name (default `podnet0`).
    pub bridge: Option<String>,
    /// The node's pod CIDR, when no agent provides one.
    pub subnet: Option<String>,
    /// Gateway address (default: first address of the subnet).
    pub gateway: Option<String>,
    /// Pod MTU (default: from the agent, else the node's default-route interface).
    pub mtu: Option<u32>,
    /// Where built-in IPAM keeps its state (default /var/lib/podnet/ipam).
    pub data_dir: Option<String>,
    /// Drop forged MAC, ARP and IP sources from the pod (default true).
    pub anti_spoofing: Option<bool>,
    /// When it has a `type`, IPAM is delegated to that plugin.
    pub ipam: Option<Value>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    pub runtime_config: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The name used by CNI 1.1 drafts; still accepted.
    #[serde(rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Decodes stdin. Syntax and type errors are code 6; a missing name or type code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        NetConf::parse_raw(bytes).map(|(conf, _)| conf)
    }

    /// Decodes stdin into the typed configuration and the whole JSON (for keys outside
    /// the struct). One parse for both, so a document is either fully read or refused
    /// (code 6): serde skips unknown keys without checking them, so a value only JSON
    /// itself refuses (a number out of range) would otherwise pass the struct and be
    /// lost from the JSON.
    pub fn parse_raw(bytes: &[u8]) -> Result<(NetConf, Value), CniError> {
        let bad = |e: serde_json::Error| {
            CniError::new(
                code::DECODE,
                "cannot decode the network configuration on stdin",
                format!("{e}; the configuration must be a JSON object as in the CNI spec"),
            )
        };
        let raw: Value = serde_json::from_slice(bytes).map_err(bad)?;
        let conf = NetConf::deserialize(&raw).map_err(bad)?;
        Ok((conf, raw))
    }

    /// The configuration's version, checked against what podnet supports (code 1).
    /// A configuration without `cniVersion` is treated as 0.1.0, as libcni does.
    pub fn version(&self) -> Result<Version, CniError> {
        let raw = if self.cni_version.is_empty() {
            "0.1.0"
        } else {
            self.cni_version.as_str()
        };
        match Version::parse(raw) {
            Some(v) if v.is_supported() => Ok(v),
            _ => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {raw:?}"),
                format!(
                    "podnet-cni supports {}; set cniVersion in the network configuration to one of them",
                    version::SUPPORTED.join(", ")
                ),
            )),
        }
    }

    /// Name and type are required by the spec for every verb that takes a config.
    pub fn require_identity(&self) -> Result<(), CniError> {
        if self.name.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no \"name\"",
                "add a network name, e.g. \"name\": \"podnet\"",
            ));
        }
        if self.plugin_type.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no \"type\"",
                "set \"type\": \"podnet-cni\"",
            ));
        }
        Ok(())
    }

    /// The `type` of the delegated IPAM plugin, if IPAM is delegated.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()?
            .get("type")?
            .as_str()
            .filter(|t| !t.is_empty())
    }

    /// GC's list of attachments to keep; `None` when the request named none.
    pub fn gc_keep(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podnet_keys() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"podnet-cni","bridge":"br9",
                 "subnet":"10.9.0.0/24","mtu":1400,"antiSpoofing":false,"dataDir":"/tmp/x"}"#,
        )
        .unwrap();
        assert_eq!(c.version().unwrap(), Version::V1_1_0);
        assert_eq!(c.bridge.as_deref(), Some("br9"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.anti_spoofing, Some(false));
        assert!(c.ipam_type().is_none());
    }

    #[test]
    fn errors_have_the_right_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(br#"{"mtu":"big"}"#).unwrap_err().code, 6);
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#).unwrap();
        assert_eq!(old.version().unwrap_err().code, 1);
        let none = NetConf::parse(br#"{"name":"n","type":"t"}"#).unwrap();
        assert_eq!(none.version().unwrap_err().code, 1);
        let noname = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"t"}"#).unwrap();
        assert_eq!(noname.require_identity().unwrap_err().code, 7);
    }

    #[test]
    fn gc_accepts_both_keys() {
        let a = NetConf::parse(
            br#"{"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(a.gc_keep().unwrap()[0].container_id, "c1");
        let b =
            NetConf::parse(br#"{"cni.dev/attachments":[{"containerID":"c2","ifname":"eth0"}]}"#)
                .unwrap();
        assert_eq!(b.gc_keep().unwrap()[0].container_id, "c2");
        assert!(NetConf::parse(b"{}").unwrap().gc_keep().is_none());
    }

    #[test]
    fn delegated_ipam_type() {
        let c =
            NetConf::parse(br#"{"ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}"#).unwrap();
        assert_eq!(c.ipam_type(), Some("host-local"));
        let e = NetConf::parse(br#"{"ipam":{}}"#).unwrap();
        assert_eq!(e.ipam_type(), None);
    }
}
