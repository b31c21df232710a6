//! Proposal batching, done on the driver's thread.
//!
//! No timer and no thread of its own: when the driver takes one proposal off the queue it takes
//! whatever else is already waiting too, up to the byte and count limits. When the driver is
//! busy the queue fills and the next batch is large; when the node is idle a lone proposal goes
//! out at once. (A batcher thread in front of the driver batched no better, and cost a lone
//! proposal one more thread wake-up: about a sixth of the in-memory commit latency.)

use crossbeam_channel::Receiver;

use super::transport::ProposalRequest;

#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) requests: Vec<ProposalRequest>,
}

/// `first`, and every proposal waiting behind it up to the limits.
pub(crate) fn gather(
    first: ProposalRequest,
    proposals: &Receiver<ProposalRequest>,
    max_batch_bytes: usize,
    max_batch_entries: usize,
) -> Batch {
    let mut bytes = size(&first);
    let mut requests = vec![first];
    while requests.len() < max_batch_entries && bytes < max_batch_bytes {
        match proposals.try_recv() {
            Ok(request) => {
                bytes += size(&request);
                requests.push(request);
            }
            Err(_) => break,
        }
    }
    Batch { requests }
}

fn size(request: &ProposalRequest) -> usize {
    request.command.as_ref().map_or(0, |c| c.len())
}
