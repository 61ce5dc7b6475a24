//! [`CredentialSet`]: the base provider plus one [`AssumeRole`] per distinct
//! role, sharing that base. This is what the engine holds.
//!
//! ```text
//! let mut set = CredentialSet::new(&config.credentials, &env);
//! let slot = match target.assume_role_arn {              // once per secret, at Engine::new
//!     None => Slot::Base,
//!     Some(arn) => set.role(AssumeRoleSettings { .. })?,  // same settings -> same slot
//! };
//! set.poll(slot, now) / set.on_response(id, result, now) / set.invalidate(slot, Some(&creds))
//! ```
//! Ids returned by [`CredentialSet::poll`] are unique across the set (the
//! slot is encoded in the low 16 bits), so answers need no routing table.

use super::assume_role::{AssumeRole, AssumeRoleSettings};
use super::config::CredentialsConfig;
use super::{Env, Poll, Provider, Update};
use crate::aws::sigv4::Credentials;
use crate::aws::sts::EndpointMode;
use crate::aws::HttpResponse;

const SLOT_BITS: u32 = 16;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// At most this many distinct roles.
pub const MAX_ROLES: usize = (SLOT_MASK - 1) as usize;

/// Which credentials: the base ones, or an assumed role's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Base,
    Role(usize),
}

pub struct CredentialSet {
    base: Box<dyn Provider>,
    roles: Vec<AssumeRole>,
    mode: EndpointMode,
}

impl std::fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSet")
            .field("base", &self.base.name())
            .field("roles", &self.roles)
            .field("mode", &self.mode)
            .finish()
    }
}

impl CredentialSet {
    /// The base from `config`; `AWS_STS_REGIONAL_ENDPOINTS` is read here for
    /// the roles added later.
    pub fn new(config: &CredentialsConfig, env: Env) -> CredentialSet {
        CredentialSet::with_base(super::provider(config, env), EndpointMode::from_env(env))
    }

    pub fn with_base(base: Box<dyn Provider>, mode: EndpointMode) -> CredentialSet {
        CredentialSet {
            base,
            roles: Vec::new(),
            mode,
        }
    }

    /// The slot for a role; equal settings share one slot (and one cache).
    pub fn role(&mut self, settings: AssumeRoleSettings) -> Result<Slot, String> {
        if let Some(i) = self.roles.iter().position(|r| *r.settings() == settings) {
            return Ok(Slot::Role(i));
        }
        if self.roles.len() >= MAX_ROLES {
            return Err(format!("more than {MAX_ROLES} distinct roles to assume"));
        }
        self.roles.push(AssumeRole::with_mode(settings, self.mode));
        Ok(Slot::Role(self.roles.len() - 1))
    }

    /// `imds`, or `assume_role <arn> (base: imds)`: for logs.
    pub fn describe(&self, slot: Slot) -> String {
        match slot {
            Slot::Base => self.base.name().to_string(),
            Slot::Role(i) => match self.roles.get(i) {
                Some(r) => format!(
                    "assume_role {} (base: {})",
                    r.settings().role_arn,
                    self.base.name()
                ),
                None => "unknown role".into(),
            },
        }
    }

    fn code(slot: Slot) -> u64 {
        match slot {
            Slot::Base => 0,
            Slot::Role(i) => i as u64 + 1,
        }
    }

    /// Credentials for `slot`; see [`Provider::poll`]. Dispatch ids are
    /// unique across the set.
    pub fn poll(&mut self, slot: Slot, now: u64) -> Poll {
        let poll = match slot {
            Slot::Base => self.base.poll(now),
            Slot::Role(i) => match self.roles.get_mut(i) {
                Some(role) => role.poll(now, &mut self.base),
                None => return Poll::Failed("internal: unknown role slot".into()),
            },
        };
        poll.map_id(|id| (id << SLOT_BITS) | Self::code(slot))
    }

    /// A callout answer for an id from [`CredentialSet::poll`].
    pub fn on_response(
        &mut self,
        id: u64,
        result: Result<HttpResponse, String>,
        now: u64,
    ) -> Update {
        let local = id >> SLOT_BITS;
        match id & SLOT_MASK {
            0 => self.base.on_response(local, result, now),
            code => match self.roles.get_mut((code - 1) as usize) {
                Some(role) => role.on_response(local, result, now, &mut self.base),
                None => Update::Ignored,
            },
        }
    }

    /// AWS rejected `rejected`, obtained from `slot`: drop them.
    pub fn invalidate(&mut self, slot: Slot, rejected: Option<&Credentials>) {
        match slot {
            Slot::Base => self.base.invalidate(rejected),
            Slot::Role(i) => {
                if let Some(role) = self.roles.get_mut(i) {
                    role.invalidate(rejected);
                }
            }
        }
    }

    /// Every slot in use, for periodic refresh from the tick.
    pub fn slots(&self) -> impl Iterator<Item = Slot> {
        std::iter::once(Slot::Base).chain((0..self.roles.len()).map(Slot::Role))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const ROLE_A: &str = "arn:aws:iam::1:role/a";
    const ROLE_B: &str = "arn:aws:iam::1:role/b";

    fn imds_set() -> CredentialSet {
        let env = env_of(&[]);
        CredentialSet::new(&CredentialsConfig::default(), &env)
    }

    #[test]
    fn roles_are_deduplicated() {
        let mut set = imds_set();
        let a = set
            .role(AssumeRoleSettings::new(ROLE_A, "us-east-1"))
            .unwrap();
        let b = set
            .role(AssumeRoleSettings::new(ROLE_B, "us-east-1"))
            .unwrap();
        let a2 = set
            .role(AssumeRoleSettings::new(ROLE_A, "us-east-1"))
            .unwrap();
        let a_eu = set
            .role(AssumeRoleSettings::new(ROLE_A, "eu-west-1"))
            .unwrap();
        assert_eq!(
            (a, b, a2, a_eu),
            (Slot::Role(0), Slot::Role(1), Slot::Role(0), Slot::Role(2))
        );
        assert_eq!(set.slots().count(), 4);
        assert_eq!(set.describe(Slot::Base), "chain");
        assert_eq!(
            set.describe(b),
            format!("assume_role {ROLE_B} (base: chain)")
        );
    }

    #[test]
    fn two_roles_share_one_base() {
        let mut set = imds_set();
        let a = set
            .role(AssumeRoleSettings::new(ROLE_A, "us-east-1"))
            .unwrap();
        let b = set
            .role(AssumeRoleSettings::new(ROLE_B, "eu-west-1"))
            .unwrap();
        // Role a triggers the base's IMDS fetch; role b waits for it.
        let (id, upstream, req, _) = dispatched(set.poll(a, T0));
        assert_eq!(
            (upstream.as_str(), req.method.as_str()),
            ("169.254.169.254", "PUT")
        );
        assert_eq!(set.poll(b, T0), Poll::Pending);
        assert_eq!(set.poll(Slot::Base, T0), Poll::Pending);
        assert_eq!(
            set.on_response(id, Ok(resp(200, "imds-token")), T0),
            Update::Progress
        );
        // The base's next step comes out of whichever slot polls first.
        let (id, ..) = dispatched(set.poll(b, T0));
        set.on_response(id, Ok(resp(200, "node-role")), T0);
        let (id, ..) = dispatched(set.poll(Slot::Base, T0));
        assert!(matches!(
            set.on_response(id, Ok(resp(200, &imds_json(T0 + 6 * HOUR))), T0),
            Update::Refreshed { .. }
        ));
        // Each role makes its own STS call with the shared base credentials.
        let (ida, ua, ..) = dispatched(set.poll(a, T0));
        let (idb, ub, ..) = dispatched(set.poll(b, T0));
        assert_eq!(ua, "sts.us-east-1.amazonaws.com");
        assert_eq!(ub, "sts.eu-west-1.amazonaws.com");
        assert_ne!(ida, idb);
        assert_eq!(
            set.on_response(ida ^ 1 << 20, Ok(resp(200, "")), T0),
            Update::Ignored
        );
        set.on_response(idb, Ok(resp(200, &sts_xml("AssumeRole", T0 + HOUR))), T0);
        assert_eq!(set.poll(a, T0), Poll::Pending);
        assert_eq!(ready(set.poll(b, T0)).expires_at, Some(T0 + HOUR));
        set.on_response(
            ida,
            Ok(resp(200, &sts_xml("AssumeRole", T0 + 2 * HOUR))),
            T0,
        );
        assert_eq!(ready(set.poll(a, T0)).expires_at, Some(T0 + 2 * HOUR));
        assert_eq!(
            ready(set.poll(Slot::Base, T0)).expires_at,
            Some(T0 + 6 * HOUR)
        );

        // Invalidating a role leaves the base and the other role alone.
        let ca = ready(set.poll(a, T0)).credentials;
        set.invalidate(a, Some(&ca));
        assert!(matches!(set.poll(a, T0 + 1), Poll::Dispatch { .. }));
        assert!(matches!(set.poll(b, T0 + 1), Poll::Ready(_)));
        assert!(matches!(set.poll(Slot::Base, T0 + 1), Poll::Ready(_)));
        assert_eq!(
            set.on_response(12345 << 16 | 77, Ok(resp(200, "")), T0),
            Update::Ignored
        );
        assert!(matches!(set.poll(Slot::Role(9), T0), Poll::Failed(_)));
        assert!(!format!("{set:?}").contains(SECRET));
    }

    #[test]
    fn base_only() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ]);
        let config = CredentialsConfig {
            source: super::super::Source::Env,
            ..CredentialsConfig::default()
        };
        let mut set = CredentialSet::new(&config, &env);
        assert_eq!(
            ready(set.poll(Slot::Base, T0)).credentials.access_key_id,
            AKID
        );
        assert_eq!(set.describe(Slot::Base), "env");
        // Pinned to env: no fall-through to anything else.
        let empty = env_of(&[]);
        let mut set = CredentialSet::new(&config, &empty);
        assert!(matches!(set.poll(Slot::Base, T0), Poll::NotConfigured(_)));
    }
}
