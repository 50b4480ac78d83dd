import ChatCore
import Logging
import Proto

/// After the Redis subscription is (re)established: relays what was published
/// while it was down, read from the room stream, before relaying live again;
/// then the worker is ready for new streams.
enum GapFill {
    static func run(hub: Hub, store: MessageStore, readiness: WorkerReadiness, logger: Logger) async {
        var backoff = Backoff(base: 0.05, cap: 1)
        while !Task.isCancelled {
            let (after, epoch) = hub.gapFillStart
            do {
                var missed: [ChatMessage] = []
                var start: MessageID?
                if let after {
                    _ = try await store.since(after, room: ChatLimits.lobby) { missed += $0 }
                } else {
                    // First subscription: nothing older than now is news to this worker's clients.
                    start = try await store.lastID(room: ChatLimits.lobby) ?? .zero
                }
                guard hub.finishGapFill(missed: missed, startingAfter: start, epoch: epoch) else { return }
                if !missed.isEmpty {
                    logger.info("relayed messages missed while unsubscribed", metadata: ["count": "\(missed.count)"])
                }
                readiness.setReady(true)
                return
            } catch {
                logger.warning("gap fill failed; retrying", metadata: ["error": "\(error)"])
                if !(await backoff.sleep()) { return }
            }
        }
    }
}
