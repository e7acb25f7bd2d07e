//! `podnet observe`: every node's drop and flow events, followed live, merged into one
//! stream (each node's agent keeps its recent ones: `--since` shows them first).

use anyhow::{bail, Result};
use podnet_api::Client;
use podnet_api::Event;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `namespace/name` (a name alone means namespace `default`).
    pub pod: Option<String>,
    /// `dropped` or `allowed`.
    pub verdict: Option<String>,
    /// Show kept events this recent first.
    pub since: Option<Duration>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        if let Some(v) = &self.verdict {
            if e.verdict != *v {
                return false;
            }
        }
        if let Some(p) = &self.pod {
            let (ns, name) = p.split_once('/').unwrap_or(("default", p));
            if e.namespace != ns || e.pod != name {
                return false;
            }
        }
        true
    }
}

/// `500ms`, `30s`, `5m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a duration: write 500ms, 30s, 5m or 2h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("{s:?}: unknown unit {unit:?}; write 500ms, 30s, 5m or 2h"),
    })
}

/// When to stop (both optional: without either, follow until interrupted).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stop {
    pub count: Option<usize>,
    pub after: Option<Duration>,
}

/// Follows the agents at `socks`, calling `out` for every matching event in arrival
/// order; returns how many were shown. An agent that cannot be reached is reported on
/// standard error and asked again.
pub fn follow(
    socks: &[(String, PathBuf)],
    filter: &Filter,
    stop: Stop,
    out: &mut dyn FnMut(&Event) -> Result<()>,
) -> Result<usize> {
    if socks.is_empty() {
        bail!("no node to observe");
    }
    // Admitted flows cost the datapath an event each: asked for only when wanted.
    let allowed = filter.verdict.as_deref() == Some("allowed");
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let since_ms = filter
        .since
        .map(|d| now_ms.saturating_sub(d.as_millis() as u64));
    let (tx, rx) = mpsc::channel::<Event>();
    for (node, sock) in socks {
        let (tx, node, client) = (tx.clone(), node.clone(), Client::new(sock));
        std::thread::spawn(move || {
            // Where to start: the kept history, or what comes from now on.
            let mut next = 0;
            let mut first = true;
            let mut down = false;
            loop {
                let wait = if first { 0 } else { 2000 };
                match client.events(next, wait, allowed) {
                    Ok(r) => {
                        if down {
                            eprintln!("podnet observe: {node}'s agent answers again");
                            down = false;
                        }
                        for e in r.events {
                            let recent = since_ms.is_some_and(|s| e.unix_ms >= s);
                            if (!first || recent) && tx.send(e).is_err() {
                                return;
                            }
                        }
                        next = r.next;
                        first = false;
                    }
                    Err(e) => {
                        if !down {
                            eprintln!("podnet observe: {node}: {e}; trying again");
                            down = true;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        });
    }
    drop(tx);
    let t = Instant::now();
    let mut shown = 0;
    loop {
        if stop.count.is_some_and(|c| shown >= c) {
            return Ok(shown);
        }
        let left = match stop.after {
            Some(d) => match d.checked_sub(t.elapsed()) {
                Some(l) => l,
                None => return Ok(shown),
            },
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(left) {
            Ok(e) if filter.matches(&e) => {
                out(&e)?;
                shown += 1;
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(shown),
        }
    }
}

/// One event as a line for people.
pub fn render(e: &Event) -> String {
    let port = if e.port > 0 {
        format!(":{}", e.port)
    } else {
        String::new()
    };
    let who = if e.pod.is_empty() {
        "(no pod)".to_string()
    } else {
        format!("{}/{}", e.namespace, e.pod)
    };
    let mut s = format!(
        "{} {:<6} {:<8} {:<14} {} {} → {}{}  pod {}",
        e.time, e.node, e.verdict, e.reason, e.protocol, e.src, e.dst, port, who
    );
    if !e.direction.is_empty() {
        s += &format!(" ({})", e.direction);
    }
    if !e.policy.is_empty() {
        s += &format!(" policy {}", e.policy);
    }
    if !e.src_mac.is_empty() {
        s += &format!(" from {}", e.src_mac);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_filters() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        let e: Event = serde_json::from_value(serde_json::json!({
            "seq": 1, "time": "t", "unix_ms": 0, "node": "node1", "verdict": "dropped",
            "reason": "policy", "policy": "deny", "direction": "ingress", "protocol": "TCP",
            "src": "10.0.0.1", "dst": "10.0.0.2", "src_port": 1, "port": 80,
            "pod": "a", "namespace": "x"
        }))
        .unwrap();
        let f = |pod: Option<&str>, v: Option<&str>| Filter {
            pod: pod.map(String::from),
            verdict: v.map(String::from),
            since: None,
        };
        assert!(f(Some("x/a"), Some("dropped")).matches(&e));
        assert!(!f(Some("x/b"), None).matches(&e));
        assert!(!f(Some("a"), None).matches(&e), "a alone is default/a");
        assert!(!f(None, Some("allowed")).matches(&e));
        assert!(render(&e).contains("10.0.0.1 → 10.0.0.2:80"));
    }
}
