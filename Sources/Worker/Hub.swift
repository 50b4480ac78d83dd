import ChatCore
import NIOConcurrencyHelpers
import NIOCore
import Proto

/// The worker's local connections and its fan-out: one Redis subscription for
/// the worker, each message encoded once and handed to every connection on
/// its own event loop.
final class Hub: Sendable {
    struct Entry: Sendable {
        let info: ConnectionInfo
        let sessionHash: String
        let handler: NIOLoopBound<ChatConnectionHandler>
        let eventLoop: EventLoop
    }

    private let entries = NIOLockedValueBox<[String: Entry]>([:])

    func add(_ entry: Entry) {
        entries.withLockedValue { $0[entry.info.id] = entry }
    }

    func remove(_ id: String) {
        _ = entries.withLockedValue { $0.removeValue(forKey: id) }
    }

    var connections: [ConnectionInfo] { entries.withLockedValue { $0.values.map(\.info) } }
    var count: Int { entries.withLockedValue { $0.count } }
    var localUsers: [String] { Array(Set(connections.map(\.user))).sorted() }

    private func forEach(where predicate: (Entry) -> Bool = { _ in true }, _ body: @escaping @Sendable (ChatConnectionHandler) -> Void) {
        let targets = entries.withLockedValue { $0.values.filter(predicate) }
        for t in targets {
            let handler = t.handler
            t.eventLoop.execute { body(handler.value) }
        }
    }

    /// A message published on a room's channel.
    func deliver(_ message: ChatMessage) {
        let frame = SharedFrame(message: message)
        forEach { $0.deliverLive(frame) }
    }

    func presence(user: String, online: Bool) {
        let json = ServerFrame.presence(user: user, online: online).json
        forEach { $0.sendEvent(json) }
    }

    func closeSessions(hash: String, code: UInt16) {
        forEach(where: { $0.sessionHash == hash }) { $0.closeWith(code: code) }
    }

    func closeAll(code: UInt16, limit: Int) -> Int {
        let targets = entries.withLockedValue { Array($0.values.prefix(limit)) }
        for t in targets {
            let handler = t.handler
            t.eventLoop.execute { handler.value.closeWith(code: code) }
        }
        return targets.count
    }
}

/// A message frame encoded once and shared by every receiver.
struct SharedFrame: Sendable {
    let message: ChatMessage
    let bytes: ByteBuffer

    init(message: ChatMessage) {
        self.message = message
        self.bytes = ByteBuffer(string: message.json)
    }
}
