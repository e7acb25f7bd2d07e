//! The `bandwidth` capability (`runtimeConfig.bandwidth`): how fast a pod may receive
//! and send, as the kubelet derives it from the `kubernetes.io/ingress-bandwidth` and
//! `egress-bandwidth` annotations. ADD applies it as two tbf qdiscs ([`crate::add`]):
//! on the host veth (what the pod receives) and on the pod's own interface (what it
//! sends). The reference `bandwidth` plugin cannot be chained after podnet-cni: its
//! egress shaping needs the host veth's ingress qdisc, which podnet's clsact holds.

use crate::settings::Settings;
use podnet_cni_spec::{code, CniError};

/// The pod's bandwidth limits (the `bandwidth` capability: `runtimeConfig.bandwidth`,
/// rates in bits per second and bursts in bits, as the kubelet derives them from the
/// `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations). Ingress is
/// what the pod receives, egress what it sends.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Shapes {
    pub(crate) ingress: Option<podnet_netlink::tc::Shape>,
    pub(crate) egress: Option<podnet_netlink::tc::Shape>,
}

pub(crate) fn shapes(s: &Settings) -> Result<Shapes, CniError> {
    let Some(b) = s.runtime_config.as_ref().and_then(|r| r.get("bandwidth")) else {
        return Ok(Shapes::default());
    };
    let bad = |why: &str| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid runtimeConfig.bandwidth {b}"),
            why.to_string(),
        )
    };
    // Keys as the bandwidth plugin reads them: case-insensitively (Go's JSON does;
    // containerd sends `IngressRate`, the CNI conventions say `ingressRate`).
    let num = |k: &str| -> Result<u64, CniError> {
        let v = b
            .as_object()
            .and_then(|o| o.iter().find(|(name, _)| name.eq_ignore_ascii_case(k)))
            .map(|(_, v)| v);
        match v {
            None => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                bad(&format!(
                    "{k} must be a whole number (bits per second, or bits for a burst)"
                ))
            }),
        }
    };
    let shape = |rate: &str, burst: &str| -> Result<Option<podnet_netlink::tc::Shape>, CniError> {
        let (r, b) = (num(rate)?, num(burst)?);
        if r == 0 {
            return Ok(None);
        }
        if r < 8 {
            return Err(bad(&format!("{rate} {r} is under one byte per second")));
        }
        // No burst given: 100 ms of the rate. Never under one full-size frame.
        let bytes = if b == 0 { r / 80 } else { b / 8 };
        Ok(Some(podnet_netlink::tc::Shape {
            rate: r / 8,
            burst: bytes.clamp(1600, u32::MAX as u64) as u32,
        }))
    };
    Ok(Shapes {
        ingress: shape("ingressRate", "ingressBurst")?,
        egress: shape("egressRate", "egressBurst")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::settings::with_runtime_config as settings;

    #[test]
    fn bandwidth_is_read_in_bits_and_refused_when_malformed() {
        // containerd's spelling, and the conventions'.
        let s = settings(serde_json::json!({"bandwidth": {
            "IngressRate": 10_000_000u64, "IngressBurst": 4_294_967_295u64,
            "egressRate": 8_000_000u64
        }}));
        let b = shapes(&s).unwrap();
        let ing = b.ingress.unwrap();
        assert_eq!((ing.rate, ing.burst), (1_250_000, 536_870_911));
        // No burst: 100 ms of the rate.
        let eg = b.egress.unwrap();
        assert_eq!((eg.rate, eg.burst), (1_000_000, 100_000));
        assert_eq!(
            shapes(&settings(serde_json::json!({}))).unwrap(),
            Shapes::default()
        );
        for bad in [
            serde_json::json!({"bandwidth": {"ingressRate": "10M"}}),
            serde_json::json!({"bandwidth": {"egressRate": -5}}),
            serde_json::json!({"bandwidth": {"egressRate": 4}}),
        ] {
            let e = shapes(&settings(bad.clone())).unwrap_err();
            assert!(e.msg.contains("runtimeConfig.bandwidth"), "{bad}: {e:?}");
        }
    }
}
