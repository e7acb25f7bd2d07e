//! STATUS: can this node serve ADD right now? Code 50 says why not.

use crate::settings::{Ipam, Settings};
use crate::{delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_ipam::Pool;

pub fn run(inv: &Invocation) -> Result<(), CniError> {
    let unavailable =
        |msg: String, details: String| CniError::new(code::NOT_AVAILABLE, msg, details);
    let s = Settings::resolve(&inv.conf, &inv.raw).map_err(|e| unavailable(e.msg, e.details))?;
    match s.ipam.clone().expect("resolve always sets ipam") {
        Ipam::Delegate { plugin } => {
            delegate::find(&inv.env, &plugin).map_err(|e| unavailable(e.msg, e.details))?;
            // A plugin that knows STATUS answers for itself; its error is passed on.
            if delegate::supports(&inv.env, &plugin, "1.1.0") {
                delegate::exec(&inv.env, &plugin, "STATUS", &inv.stdin)?;
            }
        }
        Ipam::Builtin {
            subnet, gateway, ..
        } => {
            let pool = Pool::new(subnet, gateway)
                .map_err(|e| unavailable(e.to_string(), String::new()))?;
            let store = s.store().map_err(|e| unavailable(e.msg, e.details))?;
            let used = store
                .list()
                .map_err(|e| unavailable(e.to_string(), String::new()))?
                .iter()
                .filter(|(ip, _)| pool.assignable(*ip))
                .count();
            if used >= pool.capacity() {
                return Err(unavailable(
                    format!("no free address in {subnet}: all {used} are assigned"),
                    "delete unused pods, run GC to reclaim leaked addresses, or give the node a larger pod CIDR".into(),
                ));
            }
        }
    }
    Ok(())
}
