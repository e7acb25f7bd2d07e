//! The CNI environment: `CNI_COMMAND` and the variables each verb requires.

use crate::error::{code, CniError};

/// The verb the runtime asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The variables the spec makes mandatory for this verb.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }
}

/// The parsed environment of one plugin invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<Command>,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    /// Reads the environment through `get` (so tests need not touch the process env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let raw = get("CNI_COMMAND").unwrap_or_default();
        if raw.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set",
                "podnet-cni is run by a container runtime; set CNI_COMMAND to ADD, DEL, CHECK, STATUS, GC or VERSION",
            ));
        }
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("unknown CNI_COMMAND {raw:?}"),
                "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION",
            )
        })?;
        let val = |k: &str| get(k).unwrap_or_default();
        let env = Env {
            command: Some(command),
            container_id: val("CNI_CONTAINERID"),
            netns: val("CNI_NETNS"),
            ifname: val("CNI_IFNAME"),
            args: val("CNI_ARGS"),
            path: val("CNI_PATH"),
        };
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| get(k).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("{} needs {}", command.as_str(), missing.join(", ")),
                "the runtime must set these environment variables (CNI spec, section 'Parameters')",
            ));
        }
        if command.required().contains(&"CNI_CONTAINERID") {
            validate_container_id(&env.container_id)?;
            validate_ifname(&env.ifname)?;
        }
        Ok(env)
    }

    /// `CNI_PATH` split on `:`.
    pub fn search_path(&self) -> impl Iterator<Item = &str> {
        self.path.split(':').filter(|p| !p.is_empty())
    }
}

/// The spec: starts with an alphanumeric, then alphanumerics, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_CONTAINERID {id:?}"),
            "a container ID starts with a letter or digit and holds only letters, digits, '_', '.' and '-'",
        ))
    }
}

/// The spec: 1–15 bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_IFNAME {name:?}"),
            "an interface name is 1 to 15 characters, not '.' or '..', without '/', ':' or spaces",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_requires_all() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"),
            "{e}"
        );
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .unwrap();
        assert_eq!(ok.command, Some(Command::Add));
    }

    #[test]
    fn del_does_not_need_netns() {
        let ok = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn version_needs_nothing_and_unknown_verb_fails() {
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code, 4);
        assert_eq!(env(&[]).unwrap_err().code, 4);
    }

    #[test]
    fn ids_and_names() {
        assert!(validate_container_id("a1_b.c-d").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a-very-long-name-x").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a/b").is_err());
    }

    /// Every character class the spec (and the kernel's `dev_valid_name`) refuses.
    #[test]
    fn ids_and_names_at_their_edges() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth:0",
            "eth 0",
            "eth\t0",
            "eth\n0",
            "eth\u{a0}0",
            "sixteen-chars-xx",
        ] {
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{bad:?}");
        }
        assert!(validate_ifname("fifteen-chars-x").is_ok());
        assert!(validate_ifname(".a").is_ok());
        // 15 bytes, not 15 characters: the kernel counts bytes (IFNAMSIZ).
        assert!(validate_ifname("ééééééé_é").is_err());
        for bad in [
            "_a", ".a", "a/b", "a b", "a:b", "ab\u{e9}", "a\0b", "a;b", "a$(x)",
        ] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_container_id(&"a".repeat(4096)).is_ok());
    }
}
