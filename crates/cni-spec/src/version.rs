//! CNI specification versions and what each one allows.

use std::fmt;

/// Every version podnet-cni accepts, oldest first (the `VERSION` verb reports these).
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version; used when a request names none we can answer in.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` CNI version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `"1.0.0"`; also `"1.0"` (the reference library accepts a missing patch).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// True when podnet-cni can answer in this version.
    pub fn is_supported(self) -> bool {
        SUPPORTED.iter().any(|s| Version::parse(s) == Some(self))
    }

    /// `CHECK` exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// `STATUS` and `GC` exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 carry `"version": "4"` on each IP.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(Version::parse("1.1.0"), Some(Version::V1_1_0));
        assert_eq!(Version::parse("0.4"), Some(Version::V0_4_0));
        assert_eq!(Version::parse("1.x.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert!(Version::V0_3_0 < Version::V1_0_0);
    }

    #[test]
    fn supported_set() {
        for s in SUPPORTED {
            assert!(Version::parse(s).unwrap().is_supported(), "{s}");
        }
        assert!(!Version(0, 2, 0).is_supported());
        assert!(!Version(2, 0, 0).is_supported());
    }

    #[test]
    fn capabilities_by_version() {
        assert!(!Version(0, 3, 1).has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version(0, 4, 0).ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
    }
}
