"""MkDocs hook: the site's home page is the README, its links rewritten for the site (pages
under docs/ become site pages; other files of the repository become plain text)."""
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r'(!?)\[([^\]]*)\]\(([^)\s]+)\)')


def _link(match: re.Match) -> str:
    image, text, target = match.groups()
    if target.startswith(('http://', 'https://', '#')):
        return match.group(0)
    if target.startswith('docs/'):
        return f'{image}[{text}]({target[len("docs/"):]})'
    return text if text.startswith('`') else f'`{text}`'


def on_files(files, config):
    readme = (ROOT / 'README.md').read_text()
    files.append(File.generated(config, 'index.md', content=LINK.sub(_link, readme)))
    return files
