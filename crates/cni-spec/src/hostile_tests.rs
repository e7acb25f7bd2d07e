//! Hostile input: random and adversarial JSON through everything that reads what a
//! runtime passes (configuration, environment, `prevResult`). Nothing may panic;
//! what is refused is refused with a spec error.

use crate::{CniResult, Env, NetConf};
use serde_json::{json, Value};

/// xorshift64*: deterministic, so a failure reproduces from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A value a careless or hostile writer might put anywhere.
pub fn hostile_value(r: &mut Rng, depth: u32) -> Value {
    let scalars = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(1e300),
        json!(-0.0),
        json!(2.5),
        json!(""),
        json!("0.0.0.0/0"),
        json!("255.255.255.255/32"),
        json!("10.0.0.1/99"),
        json!("::/0"),
        json!("../../etc/passwd"),
        json!("eth0\u{0}x"),
        json!("\u{feff}\u{202e}é"),
        json!("x".repeat(300)),
    ];
    match r.below(if depth == 0 { 1 } else { 4 }) {
        0 => scalars[r.below(scalars.len() as u64) as usize].clone(),
        1 => Value::Array(
            (0..r.below(5))
                .map(|_| hostile_value(r, depth - 1))
                .collect(),
        ),
        2 => {
            let keys = [
                "interface",
                "interfaces",
                "ips",
                "routes",
                "address",
                "gateway",
                "dst",
                "gw",
                "mtu",
                "name",
                "sandbox",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..r.below(5) {
                let k = keys[r.below(keys.len() as u64) as usize];
                m.insert(k.into(), hostile_value(r, depth - 1));
            }
            Value::Object(m)
        }
        _ => json!(r.next() as i64),
    }
}

/// `v` with one value somewhere inside replaced by a hostile one.
pub fn mutate(r: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() && r.below(3) != 0 => {
            let k = m
                .keys()
                .nth(r.below(m.len() as u64) as usize)
                .unwrap()
                .clone();
            mutate(r, m.get_mut(&k).unwrap());
        }
        Value::Array(a) if !a.is_empty() && r.below(3) != 0 => {
            let i = r.below(a.len() as u64) as usize;
            mutate(r, &mut a[i]);
        }
        _ => *v = hostile_value(r, 3),
    }
}

/// Byte-level damage: flips, truncation, invalid UTF-8, stray brackets.
pub fn damage(r: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..=r.below(4) {
        if b.is_empty() {
            return;
        }
        let i = r.below(b.len() as u64) as usize;
        match r.below(5) {
            0 => b[i] = r.next() as u8,
            1 => b[i] = 0xff,
            2 => b.truncate(i),
            3 => b.insert(i, b"[{\"\\\xc3"[r.below(5) as usize]),
            _ => b.splice(i..i, [0xed, 0xa0, 0x80]).for_each(drop), // a UTF-16 surrogate
        }
    }
}

/// A valid 1.1.0 result, as ADD writes it.
pub fn sample_result() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "podnet0", "mac": "0a:58:0a:f4:00:01"},
            {"name": "pn0123456789ab", "mac": "0a:5a:0a:f4:00:05", "mtu": 1450},
            {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "mtu": 1450, "sandbox": "/run/netns/p"},
        ],
        "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
        "dns": {},
    })
}

/// A valid configuration with every key podnet reads.
pub fn sample_conf() -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "n", "type": "podnet-cni",
        "subnet": "10.244.0.0/24", "gateway": "10.244.0.1", "bridge": "podnet0",
        "mtu": 1450, "dataDir": "/nonexistent/podnet", "antiSpoofing": true,
        "lockTimeoutMs": 5000, "nodeFile": "/nonexistent/podnet-node.json",
        "ipam": {}, "dns": {},
        "runtimeConfig": {"ips": ["10.244.0.7/24"]},
        "prevResult": sample_result(),
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
    })
}

/// Everything this crate does with a configuration read from stdin.
fn digest(bytes: &[u8]) {
    let Ok(conf) = NetConf::parse(bytes) else {
        return;
    };
    if let Ok(v) = conf.version() {
        let _ = conf.require_identity();
        let _ = conf.ipam_type();
        let _ = conf.gc_keep();
        if let Some(p) = &conf.prev_result {
            if let Ok(res) = CniResult::decode(p, "prevResult") {
                let again = CniResult::decode(&res.encode(v), "re-encoded");
                assert!(again.is_ok(), "a decoded result must re-encode: {again:?}");
            }
        }
    }
}

#[test]
fn hostile_configurations_never_panic() {
    let mut r = Rng::new(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let mut v = sample_conf();
        for _ in 0..=r.below(3) {
            mutate(&mut r, &mut v);
        }
        let mut bytes = serde_json::to_vec(&v).unwrap();
        digest(&bytes);
        if round % 4 == 0 {
            damage(&mut r, &mut bytes);
            digest(&bytes);
        }
    }
}

#[test]
fn hostile_results_never_panic() {
    let mut r = Rng::new(42);
    for _ in 0..20_000 {
        let mut v = sample_result();
        for _ in 0..=r.below(3) {
            mutate(&mut r, &mut v);
        }
        if let Ok(res) = CniResult::decode(&v, "prevResult") {
            for i in res.ips.iter().filter_map(|i| i.interface) {
                assert!(i < res.interfaces.len(), "{v}");
            }
        }
    }
}

#[test]
fn deep_nesting_huge_numbers_and_bad_utf8_are_decode_errors() {
    // Deeper than serde_json's recursion limit: an error, not a stack overflow.
    for open in [b'[', b'{'] {
        let mut b = br#"{"cniVersion":"1.1.0","name":"n","type":"t","prevResult":"#.to_vec();
        for _ in 0..200_000 {
            b.push(open);
            if open == b'{' {
                b.extend_from_slice(br#""a":"#);
            }
        }
        assert_eq!(NetConf::parse(&b).unwrap_err().code, 6);
    }
    for bad in [
        &br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":1e400}"#[..],
        br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":4294967297}"#,
        br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":-1}"#,
        br#"{"cniVersion":"1.1.0","name":"n","type":"t","x":123456789012345678901234567890e99999}"#,
        b"{\"cniVersion\":\"1.1.0\",\"name\":\"n\xff\xfe\",\"type\":\"t\"}",
        b"{\"cniVersion\":\"1.1.0\",\"name\":\"\xed\xa0\x80\",\"type\":\"t\"}",
        b"\xef\xbb\xbf{}",
        b"",
        b"{\"name\":\"\\ud800\"}",
    ] {
        let e = NetConf::parse(bad)
            .map(|_| ())
            .expect_err(&String::from_utf8_lossy(bad));
        assert_eq!(e.code, 6, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn hostile_environments_never_panic() {
    let mut r = Rng::new(7);
    let odd = [
        "",
        ".",
        "..",
        "eth0",
        "a/b",
        "a:b",
        "a b",
        "é",
        "\u{0}",
        "-x",
        "x".repeat(5000).leak(),
    ];
    for _ in 0..5_000 {
        let pick = |r: &mut Rng| odd[r.below(odd.len() as u64) as usize].to_string();
        let vals: Vec<String> = (0..5).map(|_| pick(&mut r)).collect();
        let cmd = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", ""]
            [r.below(8) as usize]
            .to_string();
        let _ = Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some(cmd.clone()),
            "CNI_CONTAINERID" => Some(vals[0].clone()),
            "CNI_NETNS" => Some(vals[1].clone()),
            "CNI_IFNAME" => Some(vals[2].clone()),
            "CNI_ARGS" => Some(vals[3].clone()),
            "CNI_PATH" => Some(vals[4].clone()),
            _ => None,
        });
    }
}
