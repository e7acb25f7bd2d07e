//! Delegated IPAM: running another IPAM plugin (host-local, static, dhcp…) exactly as
//! the spec says — same environment, `CNI_COMMAND` set to the verb, the same stdin.

use podnet_cni_spec::{code, CniError, Env};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Finds `plugin` in CNI_PATH.
pub fn find(env: &Env, plugin: &str) -> Result<PathBuf, CniError> {
    if plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid IPAM plugin type {plugin:?}"),
            "ipam.type is a plugin name looked up in CNI_PATH, not a path",
        ));
    }
    env.search_path()
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::DELEGATE,
                format!("IPAM plugin {plugin:?} not found in CNI_PATH"),
                format!(
                    "looked in {}; install the plugin there or fix ipam.type",
                    env.path
                ),
            )
        })
}

/// The most a delegated IPAM plugin may print (1 MiB, as podnet-cni's own stdin).
const MAX_OUTPUT: usize = 1 << 20;

/// Runs the IPAM plugin for `command`; returns its JSON output, if it printed any.
pub fn exec(
    env: &Env,
    plugin: &str,
    command: &str,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let path = find(env, plugin)?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::DELEGATE,
                format!("cannot run IPAM plugin {}", path.display()),
                format!("{e}; check that it is an executable CNI plugin"),
            )
        })?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    // Its answer is read up to MAX_OUTPUT: a plugin printing without end must not grow
    // the runtime's plugin without bound.
    let mut stdout = Vec::new();
    let read = {
        use std::io::Read;
        let pipe = child.stdout.take().expect("stdout is piped");
        pipe.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut stdout)
    };
    if read.is_err() || stdout.len() > MAX_OUTPUT {
        let _ = child.kill();
        let _ = child.wait();
        return Err(CniError::new(
            code::DELEGATE,
            format!("IPAM plugin {plugin} answered more than {MAX_OUTPUT} bytes, or its answer could not be read"),
            "a CNI IPAM result is a few hundred bytes: check the plugin",
        ));
    }
    let status = child.wait().map_err(|e| {
        CniError::new(
            code::DELEGATE,
            format!("IPAM plugin {plugin} did not finish"),
            e.to_string(),
        )
    })?;
    let out = std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    };
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (c, msg, details) = match &parsed {
            Some(v) => (
                v.get("code")
                    .and_then(Value::as_u64)
                    .unwrap_or(code::DELEGATE as u64) as u32,
                v.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("failed")
                    .to_string(),
                v.get("details")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            None => (
                code::DELEGATE,
                format!("failed ({})", out.status),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ),
        };
        return Err(CniError::new(
            c,
            format!("IPAM plugin {plugin} {command}: {msg}"),
            details,
        ));
    }
    Ok(parsed)
}

/// True if the plugin reports support for `version` (used before sending GC).
pub fn supports(env: &Env, plugin: &str, version: &str) -> bool {
    let Ok(path) = find(env, plugin) else {
        return false;
    };
    let Ok(out) = Command::new(path)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("supportedVersions").cloned())
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(version)))
}
