//! The metrics endpoint: where it listens ([`listen_addrs`]) and hyper serving
//! `/metrics` within [`Limits`] — bounded request heads, a time to send them, a time
//! per connection, a number of connections.

use super::*;

/// What one client can take from the metrics endpoint. Anything that can reach the
/// address may connect (on a node, pods can reach the node's addresses), so each of
/// these is a bound on what such a client costs podnetd.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub connections: usize,
    /// Bytes of request line and headers read from one connection (hyper's read
    /// buffer; 8 KiB is the least hyper takes); a larger head gets 431 and a close.
    pub header_bytes: usize,
    /// Time a client has to send its whole request head, counted from its connect.
    pub header_timeout: Duration,
    /// Time one connection may last: request, scrape and the whole response written.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    /// 64 connections, 8 KiB of headers, 5 s to send them, 15 s in all: a scrape
    /// takes milliseconds and Prometheus scrapes with one connection at a time.
    fn default() -> Limits {
        Limits {
            connections: 64,
            header_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(15),
        }
    }
}

/// The addresses `--metrics-addr` names: `node:PORT` is the node's underlay address
/// (`node_ip`) and 127.0.0.1, on PORT — reachable by Prometheus, by `kubectl
/// port-forward` and from the node itself, not on the node's other addresses (the
/// bridge gateway pods use, a public interface); `ADDRESS:PORT` is that address only
/// (`0.0.0.0:9465`: all of the node's addresses).
pub fn listen_addrs(spec: &str, node_ip: Ipv4Addr) -> Result<Vec<SocketAddr>, Failure> {
    let bad = |why: &str| {
        format!(
            "--metrics-addr {spec:?}: {why}; give node:PORT (the node's underlay address and 127.0.0.1, e.g. node:9465), ADDRESS:PORT (e.g. 0.0.0.0:9465), or none"
        )
    };
    if let Some(port) = spec.strip_prefix("node:") {
        let port: u16 = port.parse().map_err(|_| bad("not a port after node:"))?;
        let mut addrs = vec![SocketAddr::from((node_ip, port))];
        if !node_ip.is_loopback() {
            addrs.push(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
        return Ok(addrs);
    }
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|e| bad(&e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("it names no address").into());
    }
    Ok(addrs)
}

/// Serves `metrics` at `/metrics` on every one of `addrs`, within `limits`, from a
/// thread of its own running a one-thread runtime (it never shares the agent's
/// threads). Returns the addresses bound (with their ports when port 0 was asked).
///
/// Only `GET /metrics` (any query) is answered: other paths get 404, other methods
/// 405. One request per connection (`Connection: close`), so a connection's time is
/// bounded by [`Limits::connection_timeout`] from its connect.
pub fn serve(
    addrs: &[SocketAddr],
    metrics: Metrics,
    limits: Limits,
) -> Result<Vec<SocketAddr>, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the metrics server's runtime: {e}"))?;
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for a in addrs {
        let cannot = |e: std::io::Error| {
            format!(
                "cannot serve metrics on {a}: {e}; choose another --metrics-addr (node:PORT or ADDRESS:PORT), or none"
            )
        };
        let l = std::net::TcpListener::bind(a).map_err(cannot)?;
        l.set_nonblocking(true).map_err(cannot)?;
        bound.push(l.local_addr().map_err(cannot)?);
        let _in_rt = rt.enter();
        listeners.push(tokio::net::TcpListener::from_std(l).map_err(cannot)?);
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(limits.header_bytes.max(8 * 1024))
                    .max_header_size(limits.header_bytes)
                    .keep_alive(false);
                let mut accepting = tokio::task::JoinSet::new();
                for l in listeners {
                    accepting.spawn(accept(
                        l,
                        slots.clone(),
                        http.clone(),
                        metrics.clone(),
                        limits,
                    ));
                }
                while accepting.join_next().await.is_some() {}
            })
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

/// The answer to one request: the metrics for `GET /metrics`, 404 or 405 otherwise.
pub(super) fn answer<B>(req: &hyper::Request<B>, metrics: &Metrics) -> hyper::Response<Body> {
    use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
    use hyper::{Method, StatusCode};
    let text = |status: StatusCode, body: &str| {
        let mut r = hyper::Response::new(Body::from(body.to_string()));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "podnetd serves /metrics only\n");
    }
    if req.method() != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "podnetd's /metrics answers GET only\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let mut r = hyper::Response::new(Body::from(metrics.encode()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
