"""Random service names for services created without one, as Docker makes them."""

from __future__ import annotations

import secrets

_LEFT = (
    "admiring adoring affectionate agitated amazing angry awesome blissful bold boring brave "
    "busy charming clever cool compassionate competent confident cranky crazy dazzling "
    "determined distracted dreamy eager ecstatic elastic elated elegant eloquent epic "
    "fervent festive flamboyant focused friendly frosty gallant gifted goofy gracious happy "
    "hardcore heuristic hopeful hungry infallible inspiring jolly jovial keen kind laughing "
    "loving lucid magical modest musing mystifying naughty nervous nice nifty nostalgic "
    "objective optimistic peaceful pedantic pensive practical priceless quirky quizzical "
    "relaxed reverent romantic sad serene sharp silly sleepy stoic strange stupefied "
    "suspicious sweet tender thirsty trusting unruffled upbeat vibrant vigilant vigorous "
    "wizardly wonderful xenodochial youthful zealous zen"
).split()
_RIGHT = (
    "albattani allen almeida archimedes ardinghelli aryabhata austin babbage banach bardeen "
    "bartik bassi bell benz bhabha bhaskara blackwell bohr booth borg bose boyd brahmagupta "
    "brattain brown carson chandrasekhar clarke colden cori cray curie darwin davinci dijkstra "
    "dubinsky easley edison einstein elion engelbart euclid euler fermat fermi feynman "
    "franklin galileo gates goldberg goldstine goldwasser golick goodall hamilton hawking "
    "heisenberg hermann heyrovsky hodgkin hoover hopper hugle hypatia jackson jang jennings "
    "jepsen johnson joliot jones kalam kapitsa keldysh keller kepler khorana kilby kirch "
    "knuth kowalevski lalande lamarr lamport leakey leavitt lewin lichterman liskov lovelace "
    "lumiere mahavira mayer mccarthy mcclintock mclean mcnulty meitner meninsky mestorf "
    "minsky mirzakhani morse murdock neumann newton nightingale nobel noether northcutt noyce "
    "panini pare pasteur payne perlman pike poincare poitras ptolemy raman ramanujan ride "
    "ritchie roentgen rosalind saha sammet shannon shaw shirley shockley sinoussi snyder "
    "spence stallman stonebraker swanson swartz swirles tesla thompson torvalds turing "
    "varahamihira visvesvaraya volhard wescoff wiles williams wilson wing wozniak wright "
    "yalow yonath"
).split()


def random_name() -> str:
    return f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
