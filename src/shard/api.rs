//! Server API calls on a shard: the shard's side of `crate::bridge::api`.

use super::core::Shard;
use crate::bridge::ApiCall;
use crate::engine::codes::ErrorCode;

impl Shard {
    /// Carries out one server API call and answers it.
    pub(crate) fn handle_api(&mut self, call: ApiCall) {
        let _ = call.reply.send(Err(ErrorCode::UnknownMethod));
    }
}
