"""Serve Keystone's WSGI application with gunicorn; run with the Keystone venv's python.

keystone 30 ships no `keystone-wsgi-public` script any more, only the WSGI module
`keystone.wsgi.api`, and importing it parses `sys.argv` with oslo.config, which refuses
gunicorn's own options. So gunicorn reads its options first, then `sys.argv` is emptied
before the (forked) worker imports Keystone. Keystone's config comes from
OS_KEYSTONE_CONFIG_FILES. Usage: python serve_keystone.py --bind 127.0.0.1:PORT [gunicorn options]
"""

import sys

from gunicorn.app.wsgiapp import WSGIApplication

if __name__ == "__main__":
    sys.argv.append("keystone.wsgi.api:application")
    app = WSGIApplication("%(prog)s [OPTIONS]")
    del sys.argv[1:]
    app.run()
