//! A join's answer ([`JoinOk`]) is the snapshot the `collab_join` reply
//! encodes: the wire reads it through [`StorySnapshot`] without another
//! copy, on the home's shard or after it crossed to the joiner's.

use super::{JoinOk, Role};
use crate::engine::wire::ClientInfo;
use crate::engine::wire::collab::{MemberId, MemberRole, SectionView, StorySnapshot};

impl From<Role> for MemberRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Editor => MemberRole::Editor,
            Role::Viewer => MemberRole::Viewer,
            Role::Queued => MemberRole::Queued,
        }
    }
}

/// The data of a section locked but never written: JSON `null`, so the
/// snapshot stays valid JSON (the model keeps it empty).
const NEVER_WRITTEN: &[u8] = b"null";

impl StorySnapshot for JoinOk {
    fn each_editor(&self, f: &mut dyn FnMut(&ClientInfo)) {
        self.editors.iter().for_each(f);
    }

    fn each_section<'s>(&'s self, f: &mut dyn FnMut(SectionView<'s>)) {
        for s in &self.sections {
            f(SectionView {
                id: &s.id,
                version: s.version,
                data: if s.data.is_empty() {
                    NEVER_WRITTEN
                } else {
                    &s.data
                },
                holder: s.lock.as_ref().map(|l| MemberId::from(&l.holder)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::collab::{LockView, Role, SectionView as ModelSection};

    fn who(c: &str, u: &str) -> ClientInfo {
        ClientInfo {
            client: c.into(),
            user: u.into(),
            info: None,
        }
    }

    #[test]
    fn a_locked_blank_section_shows_null_data_and_its_holder() {
        let ok = JoinOk {
            role: Role::Editor,
            position: None,
            editors: vec![who("c1", "ann")],
            viewers: 0,
            queued: 0,
            sections: vec![
                ModelSection {
                    id: "a".into(),
                    version: 0,
                    data: bytes::Bytes::new(),
                    lock: Some(LockView {
                        holder: who("c1", "ann"),
                        expires_ms: 5,
                    }),
                },
                ModelSection {
                    id: "b".into(),
                    version: 3,
                    data: bytes::Bytes::from_static(b"{\"t\":1}"),
                    lock: None,
                },
            ],
        };
        let mut seen = Vec::new();
        ok.each_section(&mut |s| {
            seen.push((
                s.id.to_owned(),
                s.version,
                s.data.to_vec(),
                s.holder.map(|h| h.user.to_owned()),
            ))
        });
        assert_eq!(
            seen,
            vec![
                ("a".into(), 0, b"null".to_vec(), Some("ann".into())),
                ("b".into(), 3, b"{\"t\":1}".to_vec(), None),
            ]
        );
        let mut editors = Vec::new();
        ok.each_editor(&mut |e| editors.push(e.client.clone()));
        assert_eq!(editors, vec![std::sync::Arc::<str>::from("c1")]);
    }
}
