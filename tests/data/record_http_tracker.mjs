// Records raw HTTP responses (head and body, byte for byte) of a real HTTP tracker:
// bittorrent-tracker (npm, the WebTorrent project's tracker server), on loopback only.
//
// Install it first (not committed; into target/):
//   npm install --prefix target/tools/npm --ignore-scripts bittorrent-tracker@11.2.3
// then run once:
//   node tests/data/record_http_tracker.mjs [path/to/node_modules/bittorrent-tracker/server.js]
//
// Writes under tests/data/tracker/:
//   webtorrent_http_announce_first.bin    peer A (seeder, port 6881) announces: alone
//   webtorrent_http_announce_compact.bin  peer B (leecher, port 6882), compact=1: gets A
//   webtorrent_http_announce_dict.bin     peer B again with compact=0: list of dicts
//   webtorrent_http_scrape.bin            scrape of [INFO_HASH, UNKNOWN_HASH] after B "completed"
//   webtorrent_http_failure.bin           announce with a 3-byte info_hash: failure reason
//   webtorrent_http_announce_v6.bin       A then B over [::1], compact=1: peers6
// Requests are written here by hand (not by swarmscan). Everything stops by itself.
import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const out = path.join(here, 'tracker')
const root = path.resolve(here, '..', '..')
const modulePath = process.argv[2] ||
  path.join(root, 'target/tools/npm/node_modules/bittorrent-tracker/server.js')
const { default: Server } = await import(pathToFileURL(modulePath).href)

const INFO_HASH = Buffer.from([...Array(20).keys()].map(i => i + 1))
const UNKNOWN_HASH = Buffer.alloc(20, 0xee)
const PEER_A = Buffer.from('-SW0100-AAAAAAAAAAAA')
const PEER_B = Buffer.from('-SW0100-BBBBBBBBBBBB')

// Percent-encode every byte, so the request does not depend on any URL library.
const enc = b => [...b].map(x => '%' + x.toString(16).padStart(2, '0').toUpperCase()).join('')

function get (host, port, target) {
  return new Promise((resolve, reject) => {
    const chunks = []
    const sock = net.connect({ host, port }, () => {
      sock.write(`GET ${target} HTTP/1.1\r\nHost: ${host.includes(':') ? `[${host}]` : host}:${port}\r\n` +
        'User-Agent: swarmscan-recorder\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n')
    })
    sock.setTimeout(5000, () => { sock.destroy(); reject(new Error('timeout')) })
    sock.on('data', d => chunks.push(d))
    sock.on('end', () => resolve(Buffer.concat(chunks)))
    sock.on('error', reject)
  })
}

function announce (host, port, peerId, peerPort, left, event, compact, infoHash = INFO_HASH) {
  let q = `info_hash=${enc(infoHash)}&peer_id=${enc(peerId)}&port=${peerPort}` +
    `&uploaded=0&downloaded=0&left=${left}&compact=${compact}&numwant=50`
  if (event) q += `&event=${event}`
  return get(host, port, '/announce?' + q)
}

function save (name, data) {
  fs.writeFileSync(path.join(out, name), data)
  console.error('recorded', name, data.length, 'bytes')
}

function start (host) {
  const server = new Server({ udp: false, ws: false, stats: false, interval: 600000 })
  return new Promise((resolve, reject) => {
    server.on('error', reject)
    server.on('warning', () => {})
    server.listen(0, host, () => resolve(server))
  })
}

const servers = []
const watchdog = setTimeout(() => { console.error('timed out'); process.exit(1) }, 30000)
try {
  const v4 = await start('127.0.0.1')
  servers.push(v4)
  const p4 = v4.http.address().port
  save('webtorrent_http_announce_first.bin', await announce('127.0.0.1', p4, PEER_A, 6881, 0, 'started', 1))
  save('webtorrent_http_announce_compact.bin', await announce('127.0.0.1', p4, PEER_B, 6882, 1000, 'started', 1))
  save('webtorrent_http_announce_dict.bin', await announce('127.0.0.1', p4, PEER_B, 6882, 1000, '', 0))
  await announce('127.0.0.1', p4, PEER_B, 6882, 0, 'completed', 1)
  save('webtorrent_http_scrape.bin',
    await get('127.0.0.1', p4, `/scrape?info_hash=${enc(INFO_HASH)}&info_hash=${enc(UNKNOWN_HASH)}`))
  save('webtorrent_http_failure.bin',
    await announce('127.0.0.1', p4, PEER_A, 6881, 0, 'started', 1, Buffer.from('abc')))
  try {
    const v6 = await start('::1')
    servers.push(v6)
    const p6 = v6.http.address().port
    await announce('::1', p6, PEER_A, 6881, 0, 'started', 1)
    save('webtorrent_http_announce_v6.bin', await announce('::1', p6, PEER_B, 6882, 1000, 'started', 1))
  } catch (e) {
    console.error('no IPv6 loopback, skipped:', e.message)
  }
} finally {
  for (const s of servers) await new Promise(resolve => s.close(resolve))
  clearTimeout(watchdog)
}
