//! The host names processes looked up, as other signals ask for them: the
//! DNS signal answers, TCP and TLS ask (through the pipeline), and neither
//! imports the other.

use std::net::IpAddr;

/// Who can say which host name an address came from.
pub trait HostNames {
    /// The host name `tgid` (or any process) looked up that answered `ip`.
    fn name_for(&self, tgid: u32, ip: IpAddr) -> Option<&str>;
}

/// No names known (tests, and a DNS signal that is off).
pub struct NoNames;

impl HostNames for NoNames {
    fn name_for(&self, _: u32, _: IpAddr) -> Option<&str> {
        None
    }
}
