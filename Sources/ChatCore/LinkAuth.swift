import Proto

/// The gateway–worker link handshake: each side proves it holds the cluster secret by
/// an HMAC over both sides' fresh nonces, so the secret never crosses the link and a
/// recorded handshake cannot be replayed (the other side's nonce is new every time).
///
/// Without a secret (one machine, where the sockets sit in a directory only the service's
/// user can open) the proofs are HMACs under an empty key: the handshake still runs, and
/// checks the protocol version.
public struct LinkAuth: Sendable {
    private let key: [UInt8]

    public init(secret: String?) {
        key = Array((secret ?? "").utf8)
    }

    public static func nonce() throws -> [UInt8] { try Crypto.randomBytes(LinkFrame.nonceBytes) }

    /// The transcript both proofs cover: the version, both ids (so a relayed handshake cannot
    /// be presented as another worker's or gateway's), and both nonces. Strings are
    /// length-prefixed so no two transcripts run together.
    static func transcript(_ role: String, gateway: String, worker: String, gatewayNonce: [UInt8], workerNonce: [UInt8]) -> [UInt8] {
        var out = Array("securechat-link v\(LinkFrame.version) \(role)".utf8)
        for part in [Array(gateway.utf8), Array(worker.utf8), gatewayNonce, workerNonce] {
            out += [UInt8(truncatingIfNeeded: part.count >> 8), UInt8(truncatingIfNeeded: part.count)] + part
        }
        return out
    }

    /// What the worker sends in `challenge`.
    public func workerProof(gateway: String, worker: String, gatewayNonce: [UInt8], workerNonce: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: key, Self.transcript("worker", gateway: gateway, worker: worker, gatewayNonce: gatewayNonce, workerNonce: workerNonce))
    }

    /// What the gateway sends in `proof`.
    public func gatewayProof(gateway: String, worker: String, gatewayNonce: [UInt8], workerNonce: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: key, Self.transcript("gateway", gateway: gateway, worker: worker, gatewayNonce: gatewayNonce, workerNonce: workerNonce))
    }

    /// Coordinator links: the same shape, over the client's and the coordinator's nonces.
    static func coordinatorTranscript(_ role: String, clientNonce: [UInt8], coordinatorNonce: [UInt8]) -> [UInt8] {
        var out = Array("securechat-coordinator v1 \(role)".utf8)
        for part in [clientNonce, coordinatorNonce] {
            out += [UInt8(truncatingIfNeeded: part.count >> 8), UInt8(truncatingIfNeeded: part.count)] + part
        }
        return out
    }

    /// What the coordinator sends in `authChallenge`.
    public func coordinatorProof(clientNonce: [UInt8], coordinatorNonce: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: key, Self.coordinatorTranscript("coordinator", clientNonce: clientNonce, coordinatorNonce: coordinatorNonce))
    }

    /// What a worker or gateway sends in `authFinish`.
    public func coordinatorClientProof(clientNonce: [UInt8], coordinatorNonce: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: key, Self.coordinatorTranscript("client", clientNonce: clientNonce, coordinatorNonce: coordinatorNonce))
    }

    public func verify(_ proof: [UInt8], expected: [UInt8]) -> Bool {
        Crypto.constantTimeEqual(proof, expected)
    }
}
