import ChatCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Proto
import ServiceLifecycle

/// After the Redis subscription is (re)established: relays what was published while it
/// was down, read from the room stream, before relaying live again (the Hub then counts
/// as ready). A Service that waits for "subscribed" signals, so the fill runs inside the
/// service group rather than in a task of its own.
struct GapFillService: Service {
    let hub: Hub
    let store: MessageStore
    let logger: Logger
    let subscribed: AsyncStream<Void>
    let eventLoop: EventLoop

    func run() async throws {
        // Ends with the worker's graceful shutdown, not only when the stream finishes.
        for await _ in subscribed.cancelOnGracefulShutdown() {
            await fill()
        }
    }

    private func fill() async {
        var backoff = Backoff(base: 0.05, cap: 1)
        while !Task.isCancelled {
            let (after, epoch) = hub.gapFillStart
            do {
                let pages = NIOLockedValueBox<[ChatMessage]>([])
                var start: MessageID?
                if let after {
                    _ = try await store.since(after, room: ChatLimits.lobby, on: eventLoop) { page in
                        pages.withLockedValue { $0 += page }
                    }.get()
                } else {
                    // First subscription: nothing older than now is news to this worker's clients.
                    start = try await store.lastID(room: ChatLimits.lobby) ?? .zero
                }
                let missed = pages.withLockedValue { $0 }
                guard hub.finishGapFill(missed: missed, startingAfter: start, epoch: epoch) else { return }
                if !missed.isEmpty {
                    logger.info("relayed messages missed while unsubscribed", metadata: ["count": "\(missed.count)"])
                }
                return
            } catch {
                logger.warning("gap fill failed; retrying", metadata: ["error": "\(error)"])
                if !(await backoff.sleep()) { return }
            }
        }
    }
}
