//! The batcher thread: turns a stream of proposals into batches for the driver.
//!
//! No timer: it blocks for one proposal, then takes whatever else is already waiting, up to the
//! byte and count limits. When the driver is busy the queue fills and the next batch is large;
//! when the node is idle a lone proposal goes out at once.

use crossbeam_channel::{select, Receiver, Sender};

use super::transport::ProposalRequest;

#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) requests: Vec<ProposalRequest>,
}

/// Runs until the driver is gone (`driver_gone` disconnects) or every proposer is.
pub(crate) fn run(
    proposals: Receiver<ProposalRequest>,
    batches: Sender<Batch>,
    driver_gone: Receiver<()>,
    max_batch_bytes: usize,
    max_batch_entries: usize,
) {
    loop {
        let first = select! {
            recv(proposals) -> r => match r {
                Ok(r) => r,
                Err(_) => return,
            },
            recv(driver_gone) -> _ => {
                // Fail what is still queued: nothing will ever take it.
                for r in proposals.try_iter() {
                    r.reply.fail(super::Error::stopped("the node stopped"));
                }
                return;
            }
        };
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
        if batches.send(Batch { requests }).is_err() {
            return; // The driver stopped; dropping the batch fails its proposals.
        }
    }
}

fn size(request: &ProposalRequest) -> usize {
    request.command.as_ref().map_or(0, |c| c.len())
}
