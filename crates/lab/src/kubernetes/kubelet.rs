//! `podnet lab kubelet`: the lab's own kubelet, for labs without real nodes. For every
//! Pod bound to a lab node it makes the pod through podnet-cni as a runtime does and
//! writes its status; a deleted Pod is torn down through podnet-cni DEL first.

use super::*;

/// The Pod object (as the policy crate reads it) and its uid, from the API's JSON.
pub(super) fn lab_pod(v: &Value) -> Option<(podnet_policy::objects::Pod, String)> {
    let t = podnet_policy::objects::from_api("Pod", v)?;
    match Object::from_json(t).ok()? {
        Object::Pod(mut p) => {
            p.status = None;
            Some((p, v["metadata"]["uid"].as_str()?.to_string()))
        }
        _ => None,
    }
}

/// `podnet lab kubelet` (started by `lab up --kubernetes`, in the fabric): follows
/// the API's Pods and makes, reports and tears down the lab's pods. Runs until killed.
pub fn run_kubelet(name: &str) -> Result<()> {
    let bins = Binaries::find()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let kubeconfig = Lab::open(name)?.kubeconfig();
    let kubectl = bin_dir()?.join("kubectl");
    // A watch as the trigger; every round reads the whole list, so a missed or
    // repeated event changes nothing.
    std::thread::spawn(move || loop {
        let child = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "pods", "--all-namespaces", "--watch", "-o", "name"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        if let Ok(mut c) = child {
            if let Some(out) = c.stdout.take() {
                for _ in std::io::BufReader::new(out).lines() {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            }
            let _ = c.wait();
        }
        eprintln!(
            "{} kubelet: pod watch ended; restarting it",
            crate::now_rfc3339()
        );
        let _ = tx.send(());
        std::thread::sleep(Duration::from_secs(1));
    });
    loop {
        if let Err(e) = reconcile(name, &bins) {
            tracing::warn!("{e:#}");
        }
        let _ = rx.recv_timeout(Duration::from_secs(10));
        while rx.try_recv().is_ok() {}
    }
}

/// A live pod bound to a lab node: its id, node, object, uid and the API's podIP.
type Wanted = (
    String,
    String,
    podnet_policy::objects::Pod,
    String,
    Option<String>,
);

/// A Pod being deleted: its id, namespace and name.
type Terminating = (String, String, String);

pub(super) fn reconcile(name: &str, bins: &Binaries) -> Result<()> {
    let lab = Lab::open(name)?;
    let list = lab.kubectl_json(&["get", "pods", "--all-namespaces", "-o", "json"], None)?;
    let mut st = lab.load()?.context("lab state")?;
    let say = |m: &str| tracing::info!("{m}");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let (want, terminating) = bound_pods(&st, &items);
    // Tear down first: a deleted pod's address is free before a new pod asks for it.
    tear_down_stale(&lab, &mut st, &want, bins, &say)?;
    for (id, ns, pod) in terminating {
        if !st.pods.iter().any(|p| p.name == id) {
            // Gone from the node: let the API server remove it, as a kubelet does.
            let _ = lab.kubectl(
                &[
                    "delete",
                    "pod",
                    "-n",
                    &ns,
                    &pod,
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ],
                None,
            );
        }
    }
    for (id, node, pod, uid, api_ip) in want {
        let (ns, pname) = (pod.metadata.ns().to_string(), pod.metadata.name.clone());
        if !st.pods.iter().any(|p| p.name == id) {
            let r = lab.make_pod(&mut st, &id, &node, pod.clone(), bins, &mut |m| say(m));
            if let Some(p) = st.pods.iter_mut().find(|p| p.name == id) {
                p.uid = Some(uid.clone());
            }
            lab.save(&st)?;
            if let Err(e) = r {
                say(&format!("making pod {ns}/{pname} on {node}: {e:#}"));
                continue;
            }
        } else if let Some(p) = st.pods.iter_mut().find(|p| p.name == id) {
            // Labels and annotations change in place; the pod stays.
            p.object = Some(pod.clone());
        }
        let Some(p) = st.pods.iter().find(|p| p.name == id) else {
            continue;
        };
        if api_ip.as_deref() != Some(&p.ip.to_string()) {
            write_status(&lab, &st, p, &node, &pod, &say);
        }
    }
    lab.save(&st)?;
    Ok(())
}

/// The API's Pods bound to a lab node: those that live, and those being deleted.
fn bound_pods(st: &State, items: &[Value]) -> (Vec<Wanted>, Vec<Terminating>) {
    let mine = |v: &Value| {
        v["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| st.nodes.iter().any(|x| x.name == n))
    };
    let mut want = Vec::new();
    let mut terminating = Vec::new();
    for v in items.iter().filter(|v| mine(v)) {
        let Some((pod, uid)) = lab_pod(v) else {
            continue;
        };
        let id = pod_id(&pod);
        if v["metadata"]["deletionTimestamp"].is_string() {
            terminating.push((id, pod.metadata.ns().to_string(), pod.metadata.name.clone()));
            continue;
        }
        let node = v["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ip = v["status"]["podIP"].as_str().map(String::from);
        want.push((id, node, pod, uid, ip));
    }
    (want, terminating)
}

/// Tears down, through podnet-cni DEL, every pod the kubelet made whose Pod (by name
/// and uid) is no longer wanted.
fn tear_down_stale(
    lab: &Lab,
    st: &mut State,
    want: &[Wanted],
    bins: &Binaries,
    say: &dyn Fn(&str),
) -> Result<()> {
    let stale: Vec<String> = st
        .pods
        .iter()
        .filter(|p| p.uid.is_some())
        .filter(|p| {
            !want
                .iter()
                .any(|w| w.0 == p.name && Some(&w.3) == p.uid.as_ref())
        })
        .map(|p| p.name.clone())
        .collect();
    for id in stale {
        let r = lab.del_pod(st, &id, bins);
        lab.save(st)?;
        match r {
            Ok(()) => say(&format!("pod {id} torn down")),
            Err(e) => say(&format!("tearing down pod {id}: {e:#}")),
        }
    }
    Ok(())
}

/// Writes the Pod's status as running on `node` at the pod's address; a failure is
/// only said.
fn write_status(
    lab: &Lab,
    st: &State,
    p: &crate::PodState,
    node: &str,
    pod: &podnet_policy::objects::Pod,
    say: &dyn Fn(&str),
) {
    let (ns, pname) = (pod.metadata.ns().to_string(), pod.metadata.name.clone());
    let host = st
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.underlay_ip.to_string())
        .unwrap_or_default();
    let now = crate::now_rfc3339();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let pod_ips: Vec<serde_json::Value> = std::iter::once(p.ip.to_string())
        .chain(p.ip6.map(|a| a.to_string()))
        .map(|ip| json!({ "ip": ip }))
        .collect();
    let status = json!({"status": {
        "phase": "Running", "podIP": p.ip.to_string(), "podIPs": pod_ips,
        "hostIP": host, "hostIPs": [{"ip": host}], "startTime": now,
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        "containerStatuses": pod.spec.containers.iter().map(|c| json!({
            "name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
            "restartCount": 0, "state": {"running": {"startedAt": now}},
        })).collect::<Vec<_>>(),
    }});
    lab.kubectl(
        &[
            "patch",
            "pod",
            "-n",
            &ns,
            &pname,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .map(|_| ())
    .unwrap_or_else(|e| say(&format!("writing the status of pod {ns}/{pname}: {e:#}")));
}
