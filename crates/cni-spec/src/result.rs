//! CNI results: one model, written in the shape of whichever version was requested,
//! and read back from any supported version (a `prevResult`, a delegated IPAM result).

use crate::error::{code, CniError};
use crate::net::IpNet;
use crate::version::Version;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// The most interfaces, IPs or routes a result read by [`CniResult::decode`] may hold
/// (a pod's has a handful; a runtime never passes thousands).
pub const MAX_RESULT_ENTRIES: usize = 1024;

/// An interface the plugin created or configured.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// Written only for 1.1.0 (the field is new there).
    pub mtu: Option<u32>,
    /// Path of the network namespace, for interfaces inside the pod.
    pub sandbox: Option<String>,
}

/// An address assigned to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route inside the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The outcome of ADD (and the `prevResult` of later verbs).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

impl CniResult {
    /// The JSON a runtime expects for `version`.
    pub fn encode(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if let (Some(mtu), true) = (i.mtu, version >= Version::V1_1_0) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let fam = if ip.address.addr.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(fam));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = json!({
            "cniVersion": version.to_string(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.clone().unwrap_or_else(|| json!({})),
        });
        if self.interfaces.is_empty() {
            // IPAM-only shapes have no interfaces; keep the key out rather than empty.
            out.as_object_mut().unwrap().remove("interfaces");
        }
        out
    }

    /// Reads a result of any supported version. `what` names the source in errors.
    pub fn decode(v: &Value, what: &str) -> Result<CniResult, CniError> {
        let bad =
            |detail: String| CniError::new(code::DECODE, format!("cannot decode {what}"), detail);
        let obj = v
            .as_object()
            .ok_or_else(|| bad("it is not a JSON object".into()))?;
        let str_of = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        // Each list: absent, or an array of at most MAX_RESULT_ENTRIES.
        let list = |k: &str| -> Result<&[Value], CniError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(&[]),
                Some(Value::Array(a)) if a.len() <= MAX_RESULT_ENTRIES => Ok(a),
                Some(Value::Array(a)) => Err(bad(format!(
                    "it has {} {k}, more than the {MAX_RESULT_ENTRIES} a result may hold; pass the result of ADD unchanged",
                    a.len()
                ))),
                Some(other) => Err(bad(format!("\"{k}\" is {}, not a list", short(other)))),
            }
        };
        let mut res = CniResult::default();
        let interfaces = list("interfaces")?;
        for (n, i) in interfaces.iter().enumerate() {
            let mtu = match i.get("mtu") {
                None | Some(Value::Null) => None,
                Some(m) => Some(m.as_u64().and_then(|m| u32::try_from(m).ok()).ok_or_else(
                    || {
                        bad(format!(
                            "interfaces[{n}].mtu {} is not an MTU (an integer from 0 to {})",
                            short(m),
                            u32::MAX
                        ))
                    },
                )?),
            };
            res.interfaces.push(Interface {
                name: str_of(i, "name").unwrap_or_default(),
                mac: str_of(i, "mac").unwrap_or_default(),
                mtu,
                sandbox: str_of(i, "sandbox").filter(|s| !s.is_empty()),
            });
        }
        for (n, ip) in list("ips")?.iter().enumerate() {
            let addr = str_of(ip, "address").ok_or_else(|| bad("an IP has no address".into()))?;
            let address: IpNet = addr.parse().map_err(|e| bad(format!("{e}")))?;
            let gateway = match str_of(ip, "gateway") {
                Some(g) if !g.is_empty() => Some(
                    g.parse()
                        .map_err(|_| bad(format!("gateway {g:?} is not an IP address")))?,
                ),
                _ => None,
            };
            // An index into `interfaces`: anything else (negative, fractional, past
            // the end, a string) would point a later plugin at the wrong interface.
            let interface = match ip.get("interface") {
                None | Some(Value::Null) => None,
                Some(i) => Some(
                    i.as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|i| *i < interfaces.len())
                        .ok_or_else(|| {
                            bad(format!(
                                "ips[{n}].interface {} is not an index into its {} interfaces; pass the result of ADD unchanged",
                                short(i),
                                interfaces.len()
                            ))
                        })?,
                ),
            };
            res.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for r in list("routes")? {
            let dst = str_of(r, "dst").ok_or_else(|| bad("a route has no dst".into()))?;
            let dst: IpNet = dst.parse().map_err(|e| bad(format!("{e}")))?;
            let gw = match str_of(r, "gw") {
                Some(g) if !g.is_empty() => Some(
                    g.parse()
                        .map_err(|_| bad(format!("route gw {g:?} is not an IP address")))?,
                ),
                _ => None,
            };
            res.routes.push(Route { dst, gw });
        }
        res.dns = obj.get("dns").cloned().filter(|d| d != &json!({}));
        Ok(res)
    }
}

/// A JSON value for an error message, cut to 40 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 40 {
        s
    } else {
        format!("{}…", s.chars().take(40).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "podnet0".into(),
                    mac: "0a:58:0a:f4:00:01".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:00:05".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.0.5/24".parse().unwrap(),
                gateway: Some("10.244.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.0.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn encodes_each_version() {
        let r = sample();
        let v03 = r.encode(Version(0, 3, 1));
        assert_eq!(v03["cniVersion"], "0.3.1");
        assert_eq!(v03["ips"][0]["version"], "4");
        assert!(v03["interfaces"][1].get("mtu").is_none());
        let v10 = r.encode(Version::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][0].get("mtu").is_none());
        let v11 = r.encode(Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert_eq!(v11["routes"][0]["gw"], "10.244.0.1");
    }

    #[test]
    fn roundtrips_through_every_version() {
        let r = sample();
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let ver = Version::parse(v).unwrap();
            let back = CniResult::decode(&r.encode(ver), "test").unwrap();
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.routes, r.routes, "{v}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn decode_errors() {
        assert_eq!(CniResult::decode(&json!(3), "x").unwrap_err().code, 6);
        let bad = json!({"ips":[{"address":"10.0.0.1"}]});
        assert_eq!(CniResult::decode(&bad, "x").unwrap_err().code, 6);
    }

    /// `ips[].interface` must index `interfaces`; an `mtu` must fit; the lists must
    /// be lists of sane length. Each a decode error (6) naming the field.
    #[test]
    fn decode_refuses_indexes_and_counts_out_of_range() {
        let with = |interface: Value| {
            let mut v = sample().encode(Version::V1_1_0);
            v["ips"][0]["interface"] = interface;
            CniResult::decode(&v, "prevResult")
        };
        for bad in [
            json!(3),
            json!(-1),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1.5),
            json!(1e300),
            json!("1"),
            json!([1]),
        ] {
            let e = with(bad.clone()).unwrap_err();
            assert_eq!(e.code, code::DECODE, "{bad}");
            assert!(
                e.details.contains("ips[0].interface") && e.details.contains("its 2 interfaces"),
                "{bad}: {e}"
            );
        }
        assert_eq!(with(json!(1)).unwrap().ips[0].interface, Some(1));
        assert_eq!(with(Value::Null).unwrap().ips[0].interface, None);
        // No interfaces at all: no index is valid.
        let v = json!({"ips":[{"address":"10.0.0.2/24","interface":0}]});
        assert!(CniResult::decode(&v, "x").is_err());
        // An MTU that would wrap around in 32 bits.
        let mut v = sample().encode(Version::V1_1_0);
        v["interfaces"][1]["mtu"] = json!(u64::from(u32::MAX) + 1501);
        let e = CniResult::decode(&v, "x").unwrap_err();
        assert!(e.details.contains("interfaces[1].mtu"), "{e}");
        // Lists that are not lists, or absurdly long.
        for k in ["interfaces", "ips", "routes"] {
            let mut v = sample().encode(Version::V1_1_0);
            v[k] = json!({"0": {}});
            assert!(CniResult::decode(&v, "x").is_err(), "{k}");
            v[k] = Value::Array(vec![json!({}); MAX_RESULT_ENTRIES + 1]);
            let e = CniResult::decode(&v, "x").unwrap_err();
            assert!(e.details.contains("more than the 1024"), "{k}: {e}");
        }
    }
}
