//! The names every program and file uses for podnet's choices: how nodes reach each
//! other ([`Backend`]), how pod packets move on a node ([`Datapath`]) and what enforces
//! NetworkPolicy ([`PolicyDatapath`]). Each is parsed, printed and serialized from one
//! table, so a name is declared once; with the `clap` feature each is also a command-
//! line value with its help text.

use std::fmt;
use std::str::FromStr;

/// Declares a choice: its variants, their names on the command line and on the wire,
/// and one line of help each.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $v:ident = $s:literal : $help:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $v,)+
        }

        impl $name {
            /// Every value, in the order `--help` lists them.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The name on the command line, in files and on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }

            /// One line saying what the value means.
            pub fn help(self) -> &'static str {
                match self {
                    $($name::$v => $help,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownChoice;
            fn from_str(s: &str) -> Result<Self, UnknownChoice> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| UnknownChoice {
                        what: $what,
                        got: s.to_string(),
                        valid: $name::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                $name::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()).help(self.help()))
            }
        }
    };
}

choice!(
    /// How a node reaches the pods of other nodes.
    Backend, "backend", {
        /// Pod packets in VXLAN between nodes, in clear.
        Vxlan = "vxlan": "pod packets in VXLAN (UDP 8472) between nodes, in clear",
        /// Plain routes to each node's underlay address (one L2 network).
        HostGw = "host-gw": "plain routes to each node's underlay address (nodes on one L2 network)",
        /// Pod packets encrypted by WireGuard between nodes (userspace here).
        Wireguard = "wireguard": "pod packets encrypted by WireGuard (UDP 51820) between nodes",
    }
);

choice!(
    /// How pod packets move on a node.
    Datapath, "datapath", {
        /// Through the node bridge and the node's IP stack.
        Bridge = "bridge": "pod traffic through the node bridge and the node's IP stack (the compatible choice: any policy datapath, any backend)",
        /// eBPF programs deliver pod packets straight to the destination pod or the
        /// overlay (the fast path; needs the eBPF policy datapath).
        Ebpf = "ebpf": "the fast path, the default: eBPF programs deliver pod traffic straight into the destination pod or the overlay (brings --policy-datapath ebpf)",
    }
);

choice!(
    /// What enforces NetworkPolicy on a node.
    PolicyDatapath, "policy datapath", {
        /// One nftables table, sets of peers and ports.
        Nftables = "nftables": "nftables: one table, sets of peers and ports, one atomic transaction per change",
        /// eBPF programs on every pod's host veth, LPM tries pinned in bpffs.
        Ebpf = "ebpf": "eBPF: programs on every pod's host veth, LPM tries pinned in bpffs",
        /// No enforcement: every pod open (the Flannel model).
        None = "none": "no NetworkPolicy at all (every pod open, as with Flannel)",
    }
);

choice!(
    /// The address families of a cluster's pods.
    IpFamily, "IP family", {
        /// One IPv4 address per pod.
        Ipv4 = "ipv4": "one IPv4 address per pod",
        /// One IPv4 and one IPv6 address per pod.
        Dual = "dual": "dual-stack: one IPv4 and one IPv6 address per pod (host-gw needs an IPv6 address on each node's underlay link)",
    }
);

choice!(
    /// The address family of the underlay between nodes' overlay tunnel ends (VXLAN,
    /// WireGuard). Independent of the pods' families: IPv4 and IPv6 pods both cross
    /// either.
    UnderlayFamily, "underlay family", {
        /// Tunnels between the nodes' underlay IPv4 addresses.
        Ipv4 = "ipv4": "overlay tunnels between the nodes' underlay IPv4 addresses (VXLAN adds 50 bytes, WireGuard 60)",
        /// Tunnels between the nodes' global IPv6 underlay addresses.
        Ipv6 = "ipv6": "overlay tunnels between the nodes' global underlay IPv6 addresses (VXLAN adds 70 bytes, WireGuard 80; not host-gw)",
    }
);

/// IPv4, as every cluster before IPv6 underlays.
impl Default for UnderlayFamily {
    fn default() -> UnderlayFamily {
        UnderlayFamily::Ipv4
    }
}

impl UnderlayFamily {
    /// Whether tunnels run between IPv6 addresses.
    pub fn is_ipv6(self) -> bool {
        self == UnderlayFamily::Ipv6
    }
}

/// Whether `family` can run with `backend`, or why not: host-gw has no tunnel (each
/// family of pods is routed to that family's underlay address). Every datapath
/// carries either family (the fast path writes IPv6 outer headers too).
pub fn underlay_family_fits(family: UnderlayFamily, backend: Backend) -> Result<(), String> {
    match (family, backend) {
        (UnderlayFamily::Ipv6, Backend::HostGw) => Err("--underlay-family ipv6 goes with an overlay (--backend vxlan or wireguard): host-gw has no tunnel, it routes each pod family to the peer's underlay address of that family (run --ip-family dual for IPv6 pods over host-gw)".into()),
        _ => Ok(()),
    }
}

/// IPv4, as every cluster before dual-stack.
impl Default for IpFamily {
    fn default() -> IpFamily {
        IpFamily::Ipv4
    }
}

/// A name that is none of a choice's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownChoice {
    pub what: &'static str,
    pub got: String,
    pub valid: Vec<&'static str>,
}

impl fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}: use one of {}",
            self.what,
            self.got,
            self.valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownChoice {}

/// VXLAN, as podnetd and the lab default to.
impl Default for Backend {
    fn default() -> Backend {
        Backend::Vxlan
    }
}

/// The bridge, as an agent that predates the choice ran: what a record without the
/// field means. podnetd's default is [`choose_datapaths`]'s.
impl Default for Datapath {
    fn default() -> Datapath {
        Datapath::Bridge
    }
}

/// nftables, as an agent that predates the choice ran: what a record without the field
/// means. podnetd's default is [`choose_datapaths`]'s.
impl Default for PolicyDatapath {
    fn default() -> PolicyDatapath {
        PolicyDatapath::Nftables
    }
}

/// The datapath and the policy datapath a node runs, from the flags given (`None`: not
/// given) — the one place podnetd and the lab decide them.
///
/// The default is the eBPF fast path with the eBPF policy datapath. Where the fast path
/// cannot run, the default is the bridge with nftables, the compatible choice: with
/// `--backend wireguard` (its TUN device was not tested with the fast path), or when
/// the policy datapath asked for is `nftables` or `none` (the fast path skips netfilter
/// and judges with the eBPF policy's own maps). `--datapath ebpf` brings the eBPF
/// policy datapath. A combination given in full that cannot work is refused, saying
/// which flag to change. The third value says why a default was not the fast path, for
/// the log.
pub fn choose_datapaths(
    datapath: Option<Datapath>,
    policy: Option<PolicyDatapath>,
    backend: Backend,
) -> Result<(Datapath, PolicyDatapath, Option<String>), String> {
    let wireguard = backend == Backend::Wireguard;
    match (datapath, policy) {
        (Some(Datapath::Ebpf), _) if wireguard => Err(
            "--datapath ebpf is not available with --backend wireguard (its TUN device is not an Ethernet device; not tested with the fast path): use --datapath bridge, or another --backend".into(),
        ),
        (Some(Datapath::Ebpf), Some(p)) if p != PolicyDatapath::Ebpf => Err(format!(
            "--datapath ebpf cannot run with --policy-datapath {p}: the fast path skips the bridge and the node's netfilter and judges NetworkPolicy with the eBPF policy datapath's own maps. Drop --policy-datapath (--datapath ebpf brings the eBPF one), or use --datapath bridge to keep {p}"
        )),
        (Some(d), Some(p)) => Ok((d, p, None)),
        (Some(Datapath::Ebpf), None) => Ok((Datapath::Ebpf, PolicyDatapath::Ebpf, None)),
        (Some(Datapath::Bridge), None) => Ok((Datapath::Bridge, PolicyDatapath::Nftables, None)),
        (None, _) if wireguard => Ok((
            Datapath::Bridge,
            policy.unwrap_or(PolicyDatapath::Nftables),
            Some("datapath bridge: the eBPF fast path does not run with --backend wireguard".into()),
        )),
        (None, Some(PolicyDatapath::Ebpf) | None) => {
            Ok((Datapath::Ebpf, PolicyDatapath::Ebpf, None))
        }
        (None, Some(p)) => Ok((
            Datapath::Bridge,
            p,
            Some(format!("datapath bridge: --policy-datapath {p} works where the eBPF fast path does not pass (the bridge and netfilter)")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_is_the_default_where_it_can_run() {
        use Datapath as D;
        use PolicyDatapath as P;
        let ok = |d, p, b| choose_datapaths(d, p, b).map(|(d, p, _)| (d, p));
        let vx = Backend::Vxlan;
        assert_eq!(ok(None, None, vx), Ok((D::Ebpf, P::Ebpf)));
        assert_eq!(ok(None, None, Backend::HostGw), Ok((D::Ebpf, P::Ebpf)));
        assert_eq!(ok(Some(D::Ebpf), None, vx), Ok((D::Ebpf, P::Ebpf)));
        assert_eq!(ok(Some(D::Bridge), None, vx), Ok((D::Bridge, P::Nftables)));
        assert_eq!(
            ok(None, Some(P::Nftables), vx),
            Ok((D::Bridge, P::Nftables))
        );
        assert_eq!(ok(None, Some(P::None), vx), Ok((D::Bridge, P::None)));
        assert_eq!(ok(None, Some(P::Ebpf), vx), Ok((D::Ebpf, P::Ebpf)));
        assert_eq!(
            ok(Some(D::Bridge), Some(P::Ebpf), vx),
            Ok((D::Bridge, P::Ebpf))
        );
        let wg = Backend::Wireguard;
        assert_eq!(ok(None, None, wg), Ok((D::Bridge, P::Nftables)));
        assert_eq!(ok(None, Some(P::Ebpf), wg), Ok((D::Bridge, P::Ebpf)));
        let why = choose_datapaths(None, None, wg).unwrap().2.unwrap();
        assert!(why.contains("wireguard"), "{why}");
        // Refused, naming the flag to change.
        let e = choose_datapaths(Some(D::Ebpf), Some(P::Nftables), vx).unwrap_err();
        assert!(
            e.contains("Drop --policy-datapath") && e.contains("--datapath bridge"),
            "{e}"
        );
        let e = choose_datapaths(Some(D::Ebpf), Some(P::None), vx).unwrap_err();
        assert!(e.contains("--policy-datapath none"), "{e}");
        let e = choose_datapaths(Some(D::Ebpf), None, wg).unwrap_err();
        assert!(e.contains("use --datapath bridge"), "{e}");
    }

    #[test]
    fn an_ipv6_underlay_runs_an_overlay() {
        use UnderlayFamily as U;
        let fits = underlay_family_fits;
        assert_eq!(fits(U::Ipv4, Backend::HostGw), Ok(()));
        assert_eq!(fits(U::Ipv6, Backend::Vxlan), Ok(()));
        assert_eq!(fits(U::Ipv6, Backend::Wireguard), Ok(()));
        let e = fits(U::Ipv6, Backend::HostGw).unwrap_err();
        assert!(e.contains("host-gw has no tunnel"), "{e}");
        assert_eq!("IPv6".parse::<U>(), Ok(U::Ipv6));
        assert_eq!(U::default(), U::Ipv4);
    }

    #[test]
    fn names_parse_print_and_serialize_the_same() {
        for b in Backend::ALL {
            assert_eq!(b.as_str().parse::<Backend>().unwrap(), *b);
            assert_eq!(
                serde_json::to_string(b).unwrap(),
                format!("\"{}\"", b.as_str())
            );
            assert_eq!(
                serde_json::from_str::<Backend>(&format!("\"{b}\"")).unwrap(),
                *b
            );
        }
        assert_eq!("HOST-GW".parse::<Backend>().unwrap(), Backend::HostGw);
        assert_eq!("ebpf".parse::<Datapath>().unwrap(), Datapath::Ebpf);
        assert_eq!(
            "none".parse::<PolicyDatapath>().unwrap(),
            PolicyDatapath::None
        );
        let e = "geneve".parse::<Backend>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown backend \"geneve\": use one of vxlan, host-gw, wireguard"
        );
        let e = serde_json::from_str::<PolicyDatapath>("\"iptables\"").unwrap_err();
        assert!(e.to_string().contains("nftables, ebpf, none"), "{e}");
    }
}
