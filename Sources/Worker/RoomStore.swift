import ChatCore
import NIOCore
import Proto

/// Rooms, membership, read markers and history events in Redis. Every rule that reads and
/// then writes shared state is one Lua script, so it is atomic across workers; every event a
/// change causes is published from inside the same script, so a worker's subscription sees
/// it before anything that happened later (one connection's pub/sub keeps publish order).
///
/// Key layout (docs/protocol.md, "Shared state"):
/// - `sc:room:<r>:meta` hash: kind, title, topic, owner, enc ("1"/"0"), created
/// - `sc:room:<r>:members` set (not kept for `lobby`, which is everyone in `sc:users`)
/// - `sc:room:<r>:stream` the room's history events (capped); `:trimmed` the newest id trimming dropped
/// - `sc:room:<r>:edits` hash: message id → the ids of its edits (so a delete removes them too)
/// - `sc:user:<u>:rooms` set of the user's rooms but lobby; `sc:user:<u>:read` hash room → read marker
/// - `sc:user:<u>:created` zset of the user's room creations in the last hour
/// - `sc:directory` zset of public rooms by member count; `sc:typing:<r>:<u>` the typing throttle
/// - channels: `sc:room:<r>` (RoomRelay payloads) and `sc:user:<u>` (UserRelay payloads)
struct RoomStore: Sendable {
    let redis: RedisClient
    let streamMax: Int
    let limits: Limits
    let admins: Set<String>
    let refTTLSeconds = 180
    /// `--redis-wait-replicas` and `--redis-wait-ms`: replicas that must have a message before its
    /// ack, asked on the `durable` connection.
    var waitReplicas = 0
    var waitMs = 500
    /// `--redis-hold-ms`: how long a message with a ref is tried again during an outage (`StoreHold`).
    var holdMs = 5_000
    var durable: RedisClient?
    /// Every command of this value on that one channel (see `appendDurably`).
    var pinned: Channel?

    init(redis: RedisClient, streamMax: Int, limits: Limits, admins: Set<String>, pinned: Channel? = nil) {
        self.redis = redis
        self.streamMax = streamMax
        self.limits = limits
        self.admins = admins
        self.pinned = pinned
    }

    struct Limits: Sendable {
        var roomsPerUser = 500
        var creationsPerHour = 10
        var privateMembers = 1000
    }

    static func streamKey(_ room: String) -> String { "sc:room:\(room):stream" }
    static func channel(_ room: String) -> String { "sc:room:\(room)" }
    static func userChannel(_ user: String) -> String { "sc:user:\(user)" }
    static let roomChannelPrefix = "sc:room:"
    static let userChannelPrefix = "sc:user:"

    /// What a script answered: its values, or a refusal with the contract's error code.
    enum Outcome {
        case ok([RESPValue])
        case refused(code: String, message: String)
    }

    static let prelude = """
    local function meta_key(r) return 'sc:room:' .. r .. ':meta' end
    local function members_key(r) return 'sc:room:' .. r .. ':members' end
    local function stream_key(r) return 'sc:room:' .. r .. ':stream' end
    local function rooms_key(u) return 'sc:user:' .. u .. ':rooms' end
    local function read_key(u) return 'sc:user:' .. u .. ':read' end
    local function nl() return string.char(10) end
    local function meta(r)
      local m = redis.call('HGETALL', meta_key(r))
      if #m == 0 then
        if r == 'lobby' then return {kind = 'public', title = 'lobby', enc = '0'} end
        return nil
      end
      local t = {}
      for i = 1, #m, 2 do t[m[i]] = m[i + 1] end
      return t
    end
    local function fields(f)
      local t = {}
      for i = 1, #f, 2 do t[f[i]] = f[i + 1] end
      return t
    end
    local function last_id(r)
      local e = redis.call('XREVRANGE', stream_key(r), '+', '-', 'COUNT', 1)
      if #e == 0 then return '0-0' end
      return e[1][1]
    end
    local function is_member(r, u)
      if r == 'lobby' then return true end
      return redis.call('SISMEMBER', members_key(r), u) == 1
    end
    local function id_lt(a, b)
      local am, as = string.match(a, '^(%d+)-(%d+)$')
      local bm, bs = string.match(b, '^(%d+)-(%d+)$')
      am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
      if am ~= bm then return am < bm end
      return as < bs
    end
    local function member_count(r)
      if r == 'lobby' then return redis.call('SCARD', 'sc:users') end
      return redis.call('SCARD', members_key(r))
    end
    -- The room as its members see it; read and unread only for a member.
    local function room_obj(r, u, m)
      local last = last_id(r)
      local o = {id = r, kind = m.kind, title = m.title or r, topic = m.topic or '', owner = m.owner or cjson.null,
                 encrypted = m.enc == '1', last_id = last, members = member_count(r)}
      if u and is_member(r, u) then
        local read = redis.call('HGET', read_key(u), r)
        if not read then
          read = last
          redis.call('HSET', read_key(u), r, last)
        end
        -- Others' events after the marker, up to 100 (at most 5 pages scanned past one's own).
        local unread, cursor, pages = 0, read, 0
        while unread < 100 and pages < 5 and id_lt(cursor, last) do
          local es = redis.call('XRANGE', stream_key(r), '(' .. cursor, '+', 'COUNT', 100)
          if #es == 0 then break end
          for _, e in ipairs(es) do
            if unread < 100 and fields(e[2]).from ~= u then unread = unread + 1 end
            cursor = e[1]
          end
          pages = pages + 1
        end
        o.read = read
        o.unread = unread
      end
      return o
    end
    -- A room the user may see: its meta, or the contract's error code.
    -- admin: deployment admins see public and private rooms (never dms) without being members.
    local function visible(r, u, admin)
      local m = meta(r)
      if not m then return nil, 'not_found' end
      if is_member(r, u) then return m, nil end
      if admin and m.kind ~= 'dm' then return m, nil end
      if m.kind == 'public' then return m, 'not_member' end
      return nil, 'not_found'
    end
    local function member_event(r, user, joined, by)
      local ev = {type = 'member', room = r, user = user, joined = joined}
      if by and by ~= user then ev.by = by end
      redis.call('PUBLISH', 'sc:room:' .. r, 'e' .. nl() .. cjson.encode(ev))
    end
    local function added(u, r, m, except)
      local o = room_obj(r, u, m)
      local json = cjson.encode(o)
      redis.call('PUBLISH', 'sc:user:' .. u, 'a' .. nl() .. r .. nl() .. o.last_id .. nl() .. except .. nl() .. '{"type":"room_added","room":' .. json .. '}')
      return json, o.last_id
    end
    local function removed(u, r, reason, except)
      redis.call('PUBLISH', 'sc:user:' .. u, 'r' .. nl() .. r .. nl() .. except .. nl() .. cjson.encode({type = 'room_removed', room = r, reason = reason}))
    end
    -- Puts u in room r (not lobby) with the read marker at the room's newest event.
    local function add_member(r, u, m)
      redis.call('SADD', members_key(r), u)
      redis.call('SADD', rooms_key(u), r)
      redis.call('HSET', read_key(u), r, last_id(r))
      if m.kind == 'public' then redis.call('ZINCRBY', 'sc:directory', 1, r) end
    end
    local function drop_member(r, u, m)
      redis.call('SREM', members_key(r), u)
      redis.call('SREM', rooms_key(u), r)
      redis.call('HDEL', read_key(u), r)
      if m.kind == 'public' then redis.call('ZINCRBY', 'sc:directory', -1, r) end
    end
    local function json_array(items)
      if #items == 0 then return '[]' end
      return '[' .. table.concat(items, ',') .. ']'
    end

    """

    static func script(_ body: String) -> RedisScript { RedisScript(prelude + body) }

    /// ARGV: user. Every room of the user (lobby first) as a JSON array, then (id, last_id) pairs.
    static let roomsScript = script("""
    local u = ARGV[1]
    local out, pairs_ = {}, {}
    local ids = redis.call('SMEMBERS', rooms_key(u))
    table.sort(ids)
    table.insert(ids, 1, 'lobby')
    for _, r in ipairs(ids) do
      local m = meta(r)
      if m then
        local o = room_obj(r, u, m)
        table.insert(out, cjson.encode(o))
        table.insert(pairs_, r)
        table.insert(pairs_, o.last_id)
      end
    end
    local reply = {json_array(out)}
    for _, v in ipairs(pairs_) do table.insert(reply, v) end
    return reply
    """)

    /// ARGV: user, name, kind, title, topic, enc, max rooms, max per hour, now ms, connection.
    static let createScript = script("""
    local u, r, kind, title, topic, enc = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
    local now = tonumber(ARGV[9])
    if r == 'lobby' or redis.call('EXISTS', meta_key(r)) == 1 then return {'err', 'room_exists'} end
    if redis.call('SCARD', rooms_key(u)) >= tonumber(ARGV[7]) then return {'err', 'limit', 'in too many rooms'} end
    local ck = 'sc:user:' .. u .. ':created'
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now - 3600000)
    if redis.call('ZCARD', ck) >= tonumber(ARGV[8]) then return {'err', 'limit', 'too many rooms created in the last hour'} end
    redis.call('ZADD', ck, now, r .. ':' .. now)
    redis.call('PEXPIRE', ck, 3600000)
    local m = {kind = kind, owner = u, enc = enc, topic = topic, created = tostring(now)}
    if title ~= '' then m.title = title end
    redis.call('HSET', meta_key(r), 'kind', kind, 'owner', u, 'enc', enc, 'topic', topic, 'created', m.created)
    if title ~= '' then redis.call('HSET', meta_key(r), 'title', title) end
    add_member(r, u, m)
    local json, last = added(u, r, m, ARGV[10])
    return {'ok', json, last}
    """)

    /// ARGV: user, room, max rooms, connection.
    static let joinScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m = meta(r)
    if not m then return {'err', 'not_found'} end
    if is_member(r, u) then
      local o = room_obj(r, u, m)
      return {'ok', cjson.encode(o), o.last_id}
    end
    if m.kind ~= 'public' then return {'err', 'not_found'} end
    if redis.call('SCARD', rooms_key(u)) >= tonumber(ARGV[3]) then return {'err', 'limit', 'in too many rooms'} end
    add_member(r, u, m)
    local json, last = added(u, r, m, ARGV[4])
    member_event(r, u, true, nil)
    return {'ok', json, last}
    """)

    /// ARGV: user, room, connection.
    static let leaveScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    if r == 'lobby' then return {'err', 'forbidden', 'nobody leaves the lobby'} end
    if m.kind == 'dm' then return {'err', 'forbidden', 'a direct message cannot be left'} end
    drop_member(r, u, m)
    removed(u, r, 'left', ARGV[3])
    member_event(r, u, false, nil)
    return {'ok'}
    """)

    /// ARGV: user, room, target, max rooms, max private members.
    static let inviteScript = script("""
    local u, r, t = ARGV[1], ARGV[2], ARGV[3]
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    if redis.call('SISMEMBER', 'sc:users', t) == 0 then return {'err', 'not_found'} end
    if m.kind == 'dm' then return {'err', 'forbidden', 'a direct message has two members'} end
    if is_member(r, t) then return {'ok', 'already'} end
    if redis.call('SCARD', rooms_key(t)) >= tonumber(ARGV[4]) then return {'err', 'limit', 'that user is in too many rooms'} end
    if m.kind == 'private' and redis.call('SCARD', members_key(r)) >= tonumber(ARGV[5]) then
      return {'err', 'limit', 'the room is full'}
    end
    add_member(r, t, m)
    added(t, r, m, '')
    member_event(r, t, true, u)
    return {'ok'}
    """)

    /// ARGV: user, room, target, admin ("1"/"0").
    static let removeScript = script("""
    local u, r, t = ARGV[1], ARGV[2], ARGV[3]
    local admin = ARGV[4] == '1'
    local m, err = visible(r, u, admin)
    if err == 'not_member' then err = nil end
    if err then return {'err', err} end
    if r == 'lobby' or m.kind == 'dm' then return {'err', 'forbidden', 'nobody is removed from this room'} end
    if m.owner ~= u and not admin then return {'err', 'forbidden', 'only the owner or an admin removes members'} end
    if not is_member(r, t) then return {'err', 'not_found'} end
    drop_member(r, t, m)
    removed(t, r, 'removed', '')
    member_event(r, t, false, u)
    return {'ok'}
    """)

    /// ARGV: user, room, admin, has title, title, has topic, topic.
    static let setRoomScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local admin = ARGV[3] == '1'
    local m, err = visible(r, u, admin)
    if err == 'not_member' then err = nil end
    if err then return {'err', err} end
    if r == 'lobby' or m.kind == 'dm' or (m.owner ~= u and not admin) then
      return {'err', 'forbidden', 'only the owner or an admin changes a room'}
    end
    if ARGV[4] ~= '1' and ARGV[6] ~= '1' then return {'ok', cjson.encode(room_obj(r, u, m))} end
    if ARGV[4] == '1' then
      if ARGV[5] == '' then redis.call('HDEL', meta_key(r), 'title'); m.title = nil
      else redis.call('HSET', meta_key(r), 'title', ARGV[5]); m.title = ARGV[5] end
    end
    if ARGV[6] == '1' then redis.call('HSET', meta_key(r), 'topic', ARGV[7]); m.topic = ARGV[7] end
    local shared = room_obj(r, nil, m)
    redis.call('PUBLISH', 'sc:room:' .. r, 'e' .. nl() .. '{"type":"room_updated","room":' .. cjson.encode(shared) .. '}')
    local mine = room_obj(r, u, m)
    return {'ok', cjson.encode(mine)}
    """)

    /// ARGV: user, other, max rooms, connection, the dm's id (made in Swift: byte order, whatever Lua's locale).
    static let openDMScript = script("""
    local u, t, r = ARGV[1], ARGV[2], ARGV[5]
    if redis.call('SISMEMBER', 'sc:users', t) == 0 then return {'err', 'not_found'} end
    local m = meta(r)
    if m and is_member(r, u) then
      local o = room_obj(r, u, m)
      return {'ok', cjson.encode(o), o.last_id}
    end
    if redis.call('SCARD', rooms_key(u)) >= tonumber(ARGV[3]) then return {'err', 'limit', 'in too many rooms'} end
    if redis.call('SCARD', rooms_key(t)) >= tonumber(ARGV[3]) then return {'err', 'limit', 'that user is in too many rooms'} end
    m = {kind = 'dm', enc = '1', topic = ''}
    redis.call('HSET', meta_key(r), 'kind', 'dm', 'enc', '1', 'topic', '')
    add_member(r, u, m)
    add_member(r, t, m)
    local json, last = added(u, r, m, ARGV[4])
    added(t, r, m, '')
    return {'ok', json, last}
    """)

    /// ARGV: user, query (lower case). Public rooms, most members first, at most 100.
    static let directoryScript = script("""
    local u, q = ARGV[1], ARGV[2]
    local out = {}
    local ids = redis.call('ZREVRANGE', 'sc:directory', 0, -1)
    for _, r in ipairs(ids) do
      if #out >= 100 then break end
      local m = meta(r)
      if m then
        local title = string.lower(m.title or r)
        if q == '' or string.find(r, q, 1, true) or string.find(title, q, 1, true) then
          table.insert(out, cjson.encode(room_obj(r, u, m)))
        end
      end
    end
    return {'ok', json_array(out)}
    """)

    /// ARGV: user, room, admin. The members' names, sorted, at most 1,000.
    static let membersScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m, err = visible(r, u, ARGV[3] == '1' and ARGV[2] ~= 'lobby')
    if err then return {'err', err} end
    local names
    if r == 'lobby' then names = redis.call('SMEMBERS', 'sc:users') else names = redis.call('SMEMBERS', members_key(r)) end
    table.sort(names)
    local out = {'ok'}
    for i = 1, math.min(#names, 1000) do table.insert(out, names[i]) end
    return out
    """)

    /// ARGV: user, room, start ("+" or "(id"), count. Newest first: the worker reverses them.
    static let historyScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    return {'ok', redis.call('XREVRANGE', stream_key(r), ARGV[3], '-', 'COUNT', tonumber(ARGV[4]))}
    """)

    /// ARGV: user, room, after, count. A page of a replay, only while the user is a member.
    static let pageScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    local trimmed = redis.call('GET', 'sc:room:' .. r .. ':trimmed') or ''
    return {'ok', redis.call('XRANGE', stream_key(r), '(' .. ARGV[3], '+', 'COUNT', tonumber(ARGV[4])), trimmed}
    """)

    /// ARGV: user, room, id, connection.
    static let readScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    local last = last_id(r)
    local id = ARGV[3]
    if id_lt(last, id) then id = last end
    local cur = redis.call('HGET', read_key(u), r) or '0-0'
    if not id_lt(cur, id) then return {'ok', 'same'} end
    redis.call('HSET', read_key(u), r, id)
    redis.call('PUBLISH', 'sc:user:' .. u, 'f' .. nl() .. ARGV[4] .. nl() .. cjson.encode({type = 'read', room = r, id = id}))
    return {'ok'}
    """)

    /// ARGV: user, room. Relayed at most once every 2 s per user and room.
    static let typingScript = script("""
    local u, r = ARGV[1], ARGV[2]
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    if redis.call('SET', 'sc:typing:' .. r .. ':' .. u, '1', 'PX', 2000, 'NX') then
      redis.call('PUBLISH', 'sc:room:' .. r, 't' .. nl() .. u .. nl() .. cjson.encode({type = 'typing', room = r, user = u}))
    end
    return {'ok'}
    """)

    /// Dedupe by ref, check membership, the room's encryption and the target, remember what
    /// trimming drops, XADD, PUBLISH: one atomic step. A delete removes its target's entry and
    /// every edit of it from the stream, so their text is served no more.
    /// ARGV: user, room, ref, kind, body, target, enc ("1" e2ee, "0" text, "" none), admin,
    /// stream max, ref ttl, reply_to.
    static let appendScript = script("""
    local u, r, ref, kind, body, target, enc = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
    local refkey = ''
    if ref ~= '' then
      refkey = 'sc:ref:' .. u .. ':' .. ref
      local prev = redis.call('GET', refkey)
      if prev then
        -- A write, so that a WAIT after this script covers the original's offset too.
        redis.call('EXPIRE', refkey, ARGV[10])
        return {'dup', prev}
      end
    end
    local m, err = visible(r, u, false)
    if err then return {'err', err} end
    if enc ~= '' and (m.enc == '1') ~= (enc == '1') then
      if enc == '1' then return {'err', 'bad_request', 'this room is not encrypted: send text'} end
      return {'err', 'bad_request', 'this room is end-to-end encrypted: send e2ee, never text'}
    end
    local sk = stream_key(r)
    if ARGV[11] ~= '' and #redis.call('XRANGE', sk, ARGV[11], ARGV[11]) == 0 then return {'err', 'not_found', 'no such message'} end
    if kind ~= 'text' then
      local e = redis.call('XRANGE', sk, target, target)
      if #e == 0 then return {'err', 'not_found', 'no such message'} end
      local f = fields(e[1][2])
      if (f.k or 'text') ~= 'text' then return {'err', 'not_found', 'no such message'} end
      if kind == 'edit' and f.from ~= u then return {'err', 'forbidden', 'only its author edits a message'} end
      if kind == 'delete' and f.from ~= u and m.owner ~= u and not (ARGV[8] == '1' and m.kind ~= 'dm') then
        return {'err', 'forbidden', 'only its author, the owner or an admin deletes a message'}
      end
    end
    local maxlen = tonumber(ARGV[9])
    local n = redis.call('XLEN', sk)
    if n >= maxlen then
      local old = redis.call('XRANGE', sk, '-', '+', 'COUNT', n - maxlen + 1)
      if #old > 0 then redis.call('SET', 'sc:room:' .. r .. ':trimmed', old[#old][1]) end
    end
    local id = redis.call('XADD', sk, 'MAXLEN', maxlen, '*', 'from', u, 'k', kind, 'b', body)
    local ek = 'sc:room:' .. r .. ':edits'
    if kind == 'edit' then
      local prev = redis.call('HGET', ek, target)
      if prev then redis.call('HSET', ek, target, prev .. ' ' .. id) else redis.call('HSET', ek, target, id) end
    elseif kind == 'delete' then
      redis.call('XDEL', sk, target)
      local edits = redis.call('HGET', ek, target)
      if edits then
        for eid in string.gmatch(edits, '%S+') do redis.call('XDEL', sk, eid) end
        redis.call('HDEL', ek, target)
      end
    end
    if refkey ~= '' then redis.call('SET', refkey, id, 'EX', ARGV[10]) end
    redis.call('PUBLISH', 'sc:room:' .. r, 'm' .. nl() .. id .. nl() .. u .. nl() .. body)
    return {'ok', id}
    """)

    // MARK: calls

    func isAdmin(_ user: String) -> Bool { admins.contains(user) }

    func run(_ script: RedisScript, _ args: [String], on loop: EventLoop) -> EventLoopFuture<Outcome> {
        Self.run(script, args, redis: redis, on: loop, pinned: pinned)
    }

    /// Runs a script that answers `{'ok', …}` (or `{'dup', …}`) or `{'err', code, message?}`.
    static func run(_ script: RedisScript, _ args: [String], redis: RedisClient, on loop: EventLoop, pinned: Channel? = nil) -> EventLoopFuture<Outcome> {
        redis.evalScriptFuture(script, keys: [], args: args, on: loop, pinned: pinned).flatMapThrowing { reply in
            guard let items = reply.array, let status = items.first?.string else { throw RedisError.unexpectedReply }
            switch status {
            case "ok", "dup": return .ok(items)
            case "err":
                let code = items.count > 1 ? items[1].string ?? "bad_request" : "bad_request"
                let message = items.count > 2 ? items[2].string ?? code : defaultMessage(code)
                return .refused(code: code, message: message)
            default: throw RedisError.unexpectedReply
            }
        }
    }

    static func defaultMessage(_ code: String) -> String {
        switch code {
        case "not_found": return "no such room, user or message"
        case "not_member": return "join the room first"
        case "forbidden": return "not allowed"
        case "room_exists": return "that name is taken"
        case "limit": return "limit reached"
        default: return code
        }
    }

    /// Every room of the user, as the JSON array for `welcome`/`rooms`, and each one's newest id.
    func rooms(user: String, on loop: EventLoop) -> EventLoopFuture<(json: String, last: [String: MessageID])> {
        redis.evalScriptFuture(Self.roomsScript, keys: [], args: [user], on: loop).flatMapThrowing { reply in
            guard let items = reply.array, let json = items.first?.string else { throw RedisError.unexpectedReply }
            var last: [String: MessageID] = [:]
            var i = 1
            while i + 1 < items.count {
                if let room = items[i].string, let id = items[i + 1].string.flatMap(MessageID.init) { last[room] = id }
                i += 2
            }
            return (json, last)
        }
    }

    /// Stores and relays a history event; its id, whether it was new, or a refusal.
    func append(room: String, user: String, kind: String, body: String, target: MessageID?, encrypted: Bool?,
                replyTo: MessageID?, ref: String?, on loop: EventLoop) -> EventLoopFuture<Result<(MessageID, Bool), Refusal>> {
        let enc = encrypted.map { $0 ? "1" : "0" } ?? ""
        let args = [user, room, ref ?? "", kind, body, target?.description ?? "", enc, isAdmin(user) ? "1" : "0",
                    String(streamMax), String(refTTLSeconds), replyTo?.description ?? ""]
        let stored = run(Self.appendScript, args, on: loop).flatMapThrowing { outcome -> Result<(MessageID, Bool), Refusal> in
            switch outcome {
            case let .refused(code, message): return .failure(Refusal(code: code, message: message))
            case let .ok(items):
                guard items.count >= 2, let id = items[1].string.flatMap(MessageID.init) else { throw RedisError.unexpectedReply }
                return .success((id, items[0].string == "ok"))
            }
        }
        return stored
    }

    /// `append` acknowledged only once `waitReplicas` replicas have it, so a failover right
    /// after the ack keeps it: the script and `WAIT` go on one connection (WAIT covers that
    /// connection's writes; a repeat of a stored ref writes too), a connection of its own
    /// (`durable`), since Redis runs nothing after a blocked WAIT on the same connection.
    func appendDurably(room: String, user: String, kind: String, body: String, target: MessageID?, encrypted: Bool?,
                       replyTo: MessageID?, ref: String?, on loop: EventLoop) -> EventLoopFuture<Result<(MessageID, Bool), Refusal>> {
        guard waitReplicas > 0, let durable else {
            return append(room: room, user: user, kind: kind, body: body, target: target, encrypted: encrypted, replyTo: replyTo, ref: ref, on: loop)
        }
        guard let ch = durable.currentChannel() else { return loop.makeFailedFuture(RedisError.unavailable) }
        let store = RoomStore(redis: durable, streamMax: streamMax, limits: limits, admins: admins, pinned: ch)
        let n = waitReplicas, ms = waitMs
        return store.append(room: room, user: user, kind: kind, body: body, target: target, encrypted: encrypted,
                            replyTo: replyTo, ref: ref, on: loop).flatMap { result in
            guard case .success = result else { return loop.makeSucceededFuture(result) }
            return durable.sendChecked(["WAIT", String(n), String(ms)], on: loop, pinned: ch).flatMapThrowing { reply in
                guard case let .integer(got) = reply, got >= n else { throw RedisError.notReplicated }
                return result
            }
        }
    }

    /// The id a ref was stored under, if the user sent it recently.
    func storedID(user: String, ref: String, on loop: EventLoop) -> EventLoopFuture<MessageID?> {
        redis.sendChecked(["GET", "sc:ref:\(user):\(ref)"], on: loop).map { $0.string.flatMap(MessageID.init) }
    }

    /// A page of a user's replay after `after`, and the newest id trimming dropped; refused when not a member.
    func page(user: String, room: String, after: MessageID, count: Int, on loop: EventLoop)
        -> EventLoopFuture<Result<(messages: [ChatMessage], trimmed: MessageID?), Refusal>> {
        run(Self.pageScript, [user, room, after.description, String(count)], on: loop).map { outcome in
            switch outcome {
            case let .refused(code, message): return .failure(Refusal(code: code, message: message))
            case let .ok(items):
                let messages = items.count > 1 ? Self.messages(from: items[1], room: room) : []
                let trimmed = items.count > 2 ? items[2].string.flatMap(MessageID.init) : nil
                return .success((messages, trimmed))
            }
        }
    }

    /// The room's most recent events (for the lobby's `welcome`), oldest first.
    func recent(room: String, count: Int, on loop: EventLoop) -> EventLoopFuture<[ChatMessage]> {
        redis.sendChecked(["XREVRANGE", Self.streamKey(room), "+", "-", "COUNT", String(count)], on: loop)
            .map { Self.messages(from: $0, room: room).reversed() }
    }

    /// Everything in the room's stream after `after` (a worker's gap fill, not a user's).
    func since(_ after: MessageID, room: String, on loop: EventLoop) -> EventLoopFuture<[ChatMessage]> {
        redis.sendChecked(["XRANGE", Self.streamKey(room), "(\(after)", "+", "COUNT", "10000"], on: loop)
            .map { Self.messages(from: $0, room: room) }
    }

    /// Stream entries as events. Entries of v1 hold `from` and `text`; later ones `from`, `k`, `b`.
    static func messages(from reply: RESPValue, room: String) -> [ChatMessage] {
        (reply.array ?? []).compactMap { entry in
            guard let pair = entry.array, pair.count == 2, let idText = pair[0].string, let id = MessageID(idText),
                  let fields = pair[1].array else { return nil }
            var from = "", text: String?, body: String?
            var i = 0
            while i + 1 < fields.count {
                switch fields[i].string {
                case "from": from = fields[i + 1].string ?? ""
                case "text": text = fields[i + 1].string
                case "b": body = fields[i + 1].string
                default: break
                }
                i += 2
            }
            if let body { return ChatMessage(id: id, room: room, from: from, body: body) }
            return ChatMessage(id: id, room: room, from: from, text: text ?? "")
        }
    }
}

/// A request refused with one of the contract's error codes.
struct Refusal: Error {
    let code: String
    let message: String
}
