//! The etcd backend against a real etcd (Debian's etcd-server) on loopback: leases kept
//! alive, expiry, changes seen by watch, damaged records skipped.

use podnet_datastore::etcd::EtcdStore;
use podnet_datastore::{Datastore, Registration};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Etcd {
    fn start() -> Etcd {
        Etcd::start_with(0, "http", &[])
    }

    /// etcd on loopback, its port chosen per test process and `offset`, with `extra`
    /// flags (TLS files).
    fn start_with(offset: u16, scheme: &str, extra: &[String]) -> Etcd {
        let port = 20000 + (std::process::id() % 20000) as u16 + offset;
        let dir =
            std::env::temp_dir().join(format!("podnet-etcd-test-{}-{offset}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        let e = Etcd { child, dir, port };
        until("etcd listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        e
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn reg(name: &str, ip: [u8; 4], ttl: u64) -> Registration {
    Registration {
        name: name.into(),
        underlay_ip: ip.into(),
        underlay_ip6: None,
        underlay_family: Default::default(),
        vtep_mac: "0a:59:c0:a8:01:0a".into(),
        backend: "vxlan".into(),
        wireguard: None,
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        node_prefix: 24,
        cluster_cidr6: None,
        ttl: Duration::from_secs(ttl),
    }
}

#[test]
fn leases_watches_and_damaged_records_on_a_real_etcd() {
    let etcd = Etcd::start();
    let url = format!("127.0.0.1:{}", etcd.port);
    let a = EtcdStore::open(&url).unwrap();
    let b = EtcdStore::open(&url).unwrap();
    let ra = a.register(&reg("a", [192, 168, 1, 10], 2)).unwrap();
    assert_eq!(b.nodes().unwrap().len(), 1);

    // B sees A's next registration through its watch, well before its 10 s timeout
    // (B read the nodes above: a change made even before it starts waiting wakes it).
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        b.wait_change(Duration::from_secs(10)).unwrap();
        (t.elapsed(), b)
    });
    let other = EtcdStore::open(&url).unwrap();
    let rb = other.register(&reg("b", [192, 168, 1, 11], 2)).unwrap();
    let (took, b) = waiter.join().unwrap();
    assert!(
        took < Duration::from_secs(2),
        "wait_change woke after {took:?}"
    );
    assert_ne!(ra.pod_cidr, rb.pod_cidr);

    // Keep-alives hold A's lease well past its 2 s TTL; the record stays the same.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        assert_eq!(a.register(&reg("a", [192, 168, 1, 10], 2)).unwrap(), ra);
        std::thread::sleep(Duration::from_millis(500));
    }
    // B's lease was never renewed: it expired and took b's keys with it.
    let names =
        |s: &EtcdStore| -> Vec<String> { s.nodes().unwrap().into_iter().map(|n| n.name).collect() };
    assert_eq!(names(&b), ["a"]);
    // A node that comes back gets its CIDR again (the reservation outlives the lease).
    assert_eq!(
        other
            .register(&reg("b", [192, 168, 1, 11], 2))
            .unwrap()
            .pod_cidr,
        rb.pod_cidr
    );

    // A damaged node record (written by hand) is skipped and reported; the others
    // still count.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([format!("http://{url}")], None)
            .await
            .unwrap();
        c.put("/podnet/nodes/zz", "{not json", None).await.unwrap();
    });
    until(
        "b sees a, b again, and not zz",
        Duration::from_secs(5),
        || {
            let mut n = names(&b);
            n.sort();
            n == ["a", "b"]
        },
    );
    let p = b.problems();
    assert!(p.len() == 1 && p[0].contains("/podnet/nodes/zz"), "{p:?}");
    // And it can be removed, as the message asks.
    assert!(b.remove("zz").unwrap());
    b.nodes().unwrap();
    assert!(b.problems().is_empty(), "{:?}", b.problems());
}

/// Runs a command that must succeed.
fn run(cmd: &mut Command) {
    let o = cmd.output().expect("run a command");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn tls_client_certificates_and_passwords_on_a_real_etcd() {
    // A CA, etcd's serving certificate for 127.0.0.1, a client certificate.
    let dir = std::env::temp_dir().join(format!("podnet-etcd-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ossl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(&dir));
    let key = |name: &str| {
        ossl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ])
    };
    key("ca.key");
    ossl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        key(&format!("{name}.key"));
        ossl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    let f = |n: &str| dir.join(n).display().to_string();
    let etcd = Etcd::start_with(
        2,
        "https",
        &[
            format!("--cert-file={}", f("server.crt")),
            format!("--key-file={}", f("server.key")),
            format!("--trusted-ca-file={}", f("ca.crt")),
            "--client-cert-auth".into(),
        ],
    );
    let host = format!("127.0.0.1:{}", etcd.port);
    let url = format!(
        "{host}?ca={}&cert={}&key={}",
        f("ca.crt"),
        f("client.crt"),
        f("client.key")
    );
    let s = EtcdStore::open_tls(&url).unwrap();
    s.register(&reg("tls", [192, 168, 1, 10], 5)).unwrap();
    assert_eq!(s.nodes().unwrap().len(), 1);
    assert_eq!(s.describe(), format!("etcds://{host}"));
    // Without a client certificate, or without TLS, etcd refuses.
    let no_cert = EtcdStore::open_tls(&format!("{host}?ca={}", f("ca.crt")));
    assert!(no_cert.and_then(|s| s.nodes()).is_err());
    let plain = EtcdStore::open(&host);
    assert!(plain.and_then(|s| s.nodes()).is_err());
    // A CA given without the file named is a clear error.
    let e = EtcdStore::open_tls(&host).err().unwrap().to_string();
    assert!(e.contains("ca="), "{e}");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);

    // Passwords: etcd with authentication on takes user:password@ and refuses without.
    let etcd = Etcd::start_with(4, "http", &[]);
    let host = format!("127.0.0.1:{}", etcd.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([format!("http://{host}")], None)
            .await
            .unwrap();
        c.user_add("root", "s3cret", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    let s = EtcdStore::open(&format!("root:s3cret@{host}")).unwrap();
    s.register(&reg("auth", [192, 168, 1, 11], 5)).unwrap();
    assert_eq!(s.nodes().unwrap().len(), 1);
    let anonymous = EtcdStore::open(&host).unwrap();
    let e = anonymous
        .nodes()
        .map(|n| n.len())
        .expect_err("etcd must refuse an anonymous read");
    assert!(e.to_string().to_lowercase().contains("user"), "{e}");
}
