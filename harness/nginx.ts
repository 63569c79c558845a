// nginx (Debian's nginx-light) on 127.0.0.1 as the balancer in front of a
// mirror, configured the way the README's "Behind a load balancer" says:
// X-Forwarded-For from $proxy_add_x_forwarded_for (what the client sent, then
// the address nginx got the request from), X-Forwarded-Proto, the client's
// Host, and no buffering of blobs. Everything it writes (config, pid, logs,
// temp files) is in its own temp dir.

import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon } from './process.js'
import { freePort } from './ports.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { waitFor, WaitAborted } from './wait.js'

export interface NginxOptions {
  /** Where nginx sends every request: `http://127.0.0.1:PORT` of the mirror. */
  readonly upstream: string
  /** Names the temp dir and log messages. */
  readonly label?: string
}

export class Nginx {
  readonly dir: string
  readonly port: number
  readonly #upstream: string
  #daemon: Daemon | undefined

  private constructor (dir: string, port: number, upstream: string) {
    this.dir = dir
    this.port = port
    this.#upstream = upstream
  }

  static async start (options: NginxOptions): Promise<Nginx> {
    const dir = await makeTempDir(`nginx-${options.label ?? 'balancer'}`)
    // A port free a moment ago can be taken by the time nginx binds it.
    for (let attempt = 1; ; attempt++) {
      const nginx = new Nginx(dir, await freePort(), options.upstream)
      try {
        await nginx.#start()
        return nginx
      } catch (err) {
        await nginx.#daemon?.stop()
        const portTaken = /Address already in use/i.test(await readFile(nginx.errorLogPath, 'utf8').catch(() => ''))
        if (!portTaken || attempt === 3) {
          await removeTempDir(dir)
          throw err
        }
        await writeFile(nginx.errorLogPath, '')
      }
    }
  }

  get url (): string { return `http://127.0.0.1:${this.port}` }
  get configPath (): string { return join(this.dir, 'nginx.conf') }
  get errorLogPath (): string { return join(this.dir, 'error.log') }
  get accessLogPath (): string { return join(this.dir, 'access.log') }

  async #start (): Promise<void> {
    await writeFile(this.configPath, this.#config())
    // -e: the error log from the first line on (before the config is read, nginx would write to the packaged path).
    const daemon = new Daemon('nginx', 'nginx', ['-p', this.dir, '-c', this.configPath, '-e', this.errorLogPath, '-g', 'daemon off;'], {
      logPath: join(this.dir, 'stdout.log'),
      stderrPath: this.errorLogPath
    })
    this.#daemon = daemon
    await waitFor(`nginx to answer on ${this.url}`, async () => {
      if (!daemon.running) throw new WaitAborted('nginx exited')
      const response = await fetch(`${this.url}/v2/`)
      await response.arrayBuffer()
      // Anything but nginx's own 502 means the mirror behind it answered.
      return response.status !== 502
    }, { timeoutMs: 15_000, describe: () => daemon.tail() })
  }

  #config (): string {
    const dir = this.dir
    return `# Written by harness/nginx.ts for one test run.
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${this.port};
    client_max_body_size 0;
    location / {
      proxy_pass ${this.#upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 900s;
    }
  }
}
`
  }

  /** The last lines of nginx's logs, for failure messages. */
  tail (): string {
    return this.#daemon?.tail() ?? '(nginx not started)'
  }

  async close (): Promise<void> {
    await this.#daemon?.stop()
    await removeTempDir(this.dir)
  }
}
