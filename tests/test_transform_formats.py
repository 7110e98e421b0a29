"""Transform and landmark file formats: parsing, format detection, exports and their round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tiling.errors import InvalidTransform
from tiling.transform_formats import (
    CONVENTION,
    ImportedTransform,
    LandmarkPairs,
    detect_format,
    matrix_json,
    mobie_view,
    parse_bigwarp_csv,
    parse_ec_clem_xml,
    parse_matrix_csv,
    parse_matrix_json,
    parse_mobie,
    parse_point_lists,
    parse_transform_file,
)

THREEDCT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clem_cryo_fib_sem_lm_3dct_landmarks"

# A 3D affine (rotation about z, scale, shear in z, translation) and a 2D one, moving -> reference.
AFFINE_3D = np.array(
    [
        [0.8, -0.6, 0.05, 12.5],
        [0.6, 0.8, 0.0, -7.25],
        [0.0, 0.1, 1.5, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
AFFINE_2D = np.array([[2.0, -0.5, 100.0], [0.5, 2.0, -40.0], [0.0, 0.0, 1.0]])
LIFTED_2D = np.array([[2.0, -0.5, 0.0, 100.0], [0.5, 2.0, 0.0, -40.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def threedct(name: str) -> str:
    path = THREEDCT / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only on development and CI machines)")
    return path.read_text()


def rejects(parser, *args, match: str) -> str:
    with pytest.raises(InvalidTransform, match=match) as caught:
        parser(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# Matrix JSON


def test_matrix_json_bare_4x4() -> None:
    result = parse_matrix_json(json.dumps(AFFINE_3D.tolist()))
    assert result.format == "matrix-json"
    assert result.matrix.dtype == np.float64
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert (result.dimensions, result.unit, result.landmarks) == (3, None, None)
    assert not result.matrix.flags.writeable


def test_matrix_json_object_with_unit_and_3x4() -> None:
    result = parse_matrix_json(json.dumps({"matrix": AFFINE_3D[:3].tolist(), "unit": "µm"}))
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert result.unit == "micrometer"
    assert "3x4" in result.notes


@pytest.mark.parametrize("rows", [AFFINE_2D.tolist(), AFFINE_2D[:2].tolist()], ids=["3x3", "2x3"])
def test_matrix_json_2d_is_lifted_with_identity_z(rows: list) -> None:
    result = parse_matrix_json(json.dumps(rows))
    np.testing.assert_array_equal(result.matrix, LIFTED_2D)
    assert result.dimensions == 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[1, 0, 0], [0, 1, 0], [NaN, 0, 1]]", r"row 3, column 1: .* not finite"),
        ("[[1, 0, 0, Infinity], [0, 1, 0, 0], [0, 0, 1, 0]]", r"row 1, column 4: .* not finite"),
        ("[[1, 0, 1e999], [0, 1, 0]]", r"row 1, column 3: .* not finite"),
        ('[[1, 0, "5"], [0, 1, 0]]', r"row 1, column 3: '5' is not a number"),
        ("[[1, 0, true], [0, 1, 0]]", r"row 1, column 3: .* is not a number"),
        ("[[1, 0], [0, 1]]", r"2x2; expected 2x3, 3x3 \(2D\), 3x4 or 4x4"),
        ("[[1, 0, 0, 0, 0]]", r"1x5"),
        ("[[1, 0, 0], [0, 1]]", r"row 2 has 2 values but row 1 has 3"),
        ("[[1, 0, 0], [0, 1, 0], [0, 0, 2]]", r"row 3 of a 3x3 homogeneous matrix must be 0 0 1, not 0 0 2"),
        ("[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0.5,0,0,1]]", r"row 4 of a 4x4 .* must be 0 0 0 1"),
        ("[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]", r"flat list of 12 values.*MoBIE"),
        ("[[1, 0, 0], [0, 1, 0]", r"not valid JSON: .*line 1, column"),
        ('{"rows": [[1, 0, 0], [0, 1, 0]]}', r'needs a "matrix" field'),
        ('{"matrix": [[1, 0, 0], [0, 1, 0]], "unit": "furlong"}', r"unknown unit 'furlong'"),
        ("[]", r"non-empty list of rows"),
        ('"identity"', r"non-empty list of rows"),
    ],
)
def test_matrix_json_rejects(text: str, match: str) -> None:
    rejects(parse_matrix_json, text, match=match)


# Matrix CSV


def test_matrix_csv_as_written_by_ec_clem() -> None:
    # eC-CLEM's *.transformation.csv: Apache commons CSVFormat.DEFAULT, CRLF, no header (MatrixToCsvFormatter).
    text = "2.0,-0.5,100.0\r\n0.5,2.0,-40.0\r\n0.0,0.0,1.0\r\n"
    result = parse_matrix_csv(text)
    np.testing.assert_array_equal(result.matrix, LIFTED_2D)
    assert (result.format, result.dimensions, result.unit) == ("matrix-csv", 2, None)


def test_matrix_csv_whitespace_semicolons_comments_and_unit() -> None:
    text = "# moving -> reference\n# unit: nm\n\n" + "\n".join(
        ("  ".join if i % 2 else "; ".join)(f"{v:.17g}" for v in row) + "  # row" for i, row in enumerate(AFFINE_3D)
    )
    result = parse_matrix_csv(text)
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert (result.unit, result.dimensions) == ("nanometer", 3)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1 0 0\n0 1 x\n0 0 1\n", r"line 2, column 3: 'x' is not a number"),
        ("1 0 0\n0 1 nan\n", r"line 2, column 3: 'nan' is not finite"),
        ("1 0 0\n0 1 -inf\n", r"line 2, column 3: '-inf' is not finite"),
        ("1 0 0\n\n0 1\n", r"line 3 has 2 values but line 1 has 3"),
        ("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 2\n", r"last row \(line 4\) of a 4x4 .* must be 0 0 0 1"),
        ("1 0\n0 1\n", r"2x2"),
        ("# nothing\n\n", r"no matrix rows"),
        ("1_000 0 0\n0 1 0\n", r"'1_000' is not a number"),
    ],
)
def test_matrix_csv_rejects(text: str, match: str) -> None:
    rejects(parse_matrix_csv, text, match=match)


# MoBIE / BigDataViewer

PARAMETERS = AFFINE_3D[:3].reshape(12).tolist()


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(PARAMETERS),
        " ".join(map(str, PARAMETERS)),
        ", ".join(map(str, PARAMETERS)) + "\n",
        "(" + ",".join(map(str, PARAMETERS)) + ")",
    ],
    ids=["json", "spaces", "commas", "parenthesised"],
)
def test_mobie_twelve_numbers_are_row_packed(text: str) -> None:
    result = parse_mobie(text)
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert (result.format, result.dimensions, result.unit) == ("mobie", 3, None)


def affine(parameters: list[float], sources: list[str], **extra: object) -> dict:
    return {"affine": {"parameters": parameters, "sources": sources, **extra}}


def translation(x: float, y: float, z: float = 0.0) -> list[float]:
    return [1.0, 0.0, 0.0, x, 0.0, 1.0, 0.0, y, 0.0, 0.0, 1.0, z]


def test_mobie_view_composes_affines_in_the_order_mobie_applies_them() -> None:
    # MoBIE wraps each transformed source again (bdv TransformedSource): A1 first, then A2, then A3.
    scale = [0.1, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]
    view = {
        "em-overview": {
            "isExclusive": False,
            "uiSelectionGroup": "bookmark",
            "sourceDisplays": [],
            "sourceTransforms": [
                affine(scale, ["em"], name="toMicrometer"),
                affine(PARAMETERS, ["em"]),
                {"crop": {"min": [0, 0, 0], "max": [1, 1, 1], "sources": ["em"]}},
                affine(translation(5.0, 6.0, 7.0), ["lm"]),  # another source: not composed
                affine(translation(1.0, -2.0), ["em"]),
            ],
        }
    }
    result = parse_mobie(json.dumps(view))
    a1 = np.vstack([np.reshape(scale, (3, 4)), [0, 0, 0, 1]])
    a3 = np.vstack([np.reshape(translation(1.0, -2.0), (3, 4)), [0, 0, 0, 1]])
    np.testing.assert_allclose(result.matrix, a3 @ AFFINE_3D @ a1)
    assert "3 affines composed in order" in result.notes
    assert "'em'" in result.notes and "1 non-affine transform ignored" in result.notes


def test_mobie_dataset_json_follows_renamed_sources() -> None:
    dataset = {
        "is2D": False,
        "sources": {},
        "views": {
            "default": {"isExclusive": False, "uiSelectionGroup": "bookmark", "sourceDisplays": []},
            "registered": {
                "isExclusive": True,
                "uiSelectionGroup": "registration",
                "sourceTransforms": [
                    affine(PARAMETERS, ["lm"], sourceNamesAfterTransform=["lm-registered"]),
                    affine(translation(9.0, 9.0), ["lm"]),  # the untransformed original: not ours
                    affine(translation(1.0, 2.0, 3.0), ["lm-registered"]),
                    {
                        "crop": {
                            "min": [0, 0, 0],
                            "max": [9, 9, 9],
                            "sources": ["lm-registered"],
                            "sourceNamesAfterTransform": ["lm-crop"],
                        }
                    },
                    {"transformedGrid": {"nestedSources": [["lm-crop"], ["em"]]}},
                    {"transformedGrid": {"nestedSources": [["em"]]}},  # not ours: not counted
                    affine(translation(0.0, 0.0, -3.0), ["lm-crop"]),
                    affine(translation(5.0, 0.0, 0.0), ["lm-registered"]),  # uncropped copy: not ours
                ],
            },
        },
    }
    result = parse_mobie(json.dumps(dataset))
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3] = [1.0, 2.0, 3.0]
    back[2, 3] = -3.0
    np.testing.assert_allclose(result.matrix, back @ shift @ AFFINE_3D)
    assert "'registered', 3 affines" in result.notes and "2 non-affine transforms ignored" in result.notes


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (json.dumps(PARAMETERS[:11]), r"12 numbers .* got 11"),
        (" ".join(map(str, PARAMETERS)) + " 1", r"12 numbers .* got 13"),
        ("1 0 0 0 0 1 0 0 0 0 one 0", r"value 11: 'one' is not a number"),
        (json.dumps([*PARAMETERS[:11], None]), r"value 12: .* is not a number"),
        ("[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, NaN]", r"value 12: .* not finite"),
        (json.dumps({"views": {"v": {"sourceTransforms": [{"crop": {"sources": ["a"]}}]}}}), r"no MoBIE affine"),
        (json.dumps({"sourceTransforms": [affine([1.0, 2.0], ["a"])]}), r"transform 1: parameters must be 12"),
        (json.dumps({"sourceTransforms": {"affine": {}}}), r"sourceTransforms must be a list"),
        (json.dumps({"views": ["a"]}), r'"views" must map view names'),
        (json.dumps([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), r"nested list is a matrix"),
        ('{"sourceTransforms": [', r"not valid JSON"),
        ("", r"empty file"),
    ],
)
def test_mobie_rejects(text: str, match: str) -> None:
    rejects(parse_mobie, text, match=match)


# eC-CLEM

# The shape TransformationSchemaToXmlFileWriter / XmlTransformationWriter.write produce (anrcrocoval/ec-clem,
# src/main/java/plugins/perrine/ec_clem/ec_clem/storage/transformation_schema/writer/XmlTransformationWriter.java):
# Icy XMLUtil "root" element, no XML declaration, source then target sequenceSize, sequenceFileName (path and
# name concatenated as the writer does), then the source and target datasets; points in micrometres.
EC_CLEM_SCHEMA_2D = """<root>
    <transformation date="2020-03-12T14:05:31.226+01:00[Europe/Paris]" noiseModel="ISOTROPIC" type="AFFINE">
        <sequenceSize dimension="3" type="source">
            <dimensionSize name="X" pixelSize="0.1">512</dimensionSize>
            <dimensionSize name="Y" pixelSize="0.1">512</dimensionSize>
            <dimensionSize name="Z" pixelSize="1.0">1</dimensionSize>
        </sequenceSize>
        <sequenceSize dimension="3" type="target">
            <dimensionSize name="X" pixelSize="0.005">2048</dimensionSize>
            <dimensionSize name="Y" pixelSize="0.005">2048</dimensionSize>
            <dimensionSize name="Z" pixelSize="1.0">1</dimensionSize>
        </sequenceSize>
        <sequenceFileName type="source">/data/clemLM.tif</sequenceFileName>
        <sequenceFileName type="target">/data/clemEM.tif</sequenceFileName>
        <dataset dimension="3" n="{n}" pointType="FIDUCIAL" type="source">
{source}
        </dataset>
        <dataset dimension="3" n="{n}" pointType="FIDUCIAL" type="target">
{target}
        </dataset>
    </transformation>
</root>
"""
EC_CLEM_SOURCE = np.array([[10.0, 5.0, 0.0], [40.5, 7.25, 0.0], [22.0, 30.0, 0.0], [3.5, 18.0, 0.0]])


def ec_clem_points(points: np.ndarray) -> str:
    return "\n".join(
        f'            <point id="{i}">\n'
        + "\n".join(f'                <coordinate dimension="{d}">{v!r}</coordinate>' for d, v in enumerate(row))
        + "\n            </point>"
        for i, row in enumerate(points.tolist())
    )


def ec_clem_schema(source: np.ndarray, target: np.ndarray) -> str:
    return (
        EC_CLEM_SCHEMA_2D.replace("{n}", str(len(source)))
        .replace("{source}", ec_clem_points(source))
        .replace("{target}", ec_clem_points(target))
    )


def ec_clem_matrix_element(matrix: np.ndarray, **extra: str) -> str:
    # TransformationToXmlFileWriter.writeMatrix: m{i}{j} for the homogeneous matrix, then process_date.
    cells = " ".join(f'm{i}{j}="{v!r}"' for i, row in enumerate(matrix.tolist()) for j, v in enumerate(row))
    more = "".join(f' {key}="{value}"' for key, value in extra.items())
    return f'    <MatrixTransformation {cells}{more} process_date="Thu Mar 12 14:05:31 CET 2020"/>'


def ec_clem_transformation_xml(matrix: np.ndarray, z_slices: tuple[int, int]) -> str:
    # *.transformation.xml: the matrix, then writeSequenceInfoOnly (sizes and file names, no datasets).
    sizes = "\n".join(
        f'        <sequenceSize dimension="3" type="{side}">\n'
        f'            <dimensionSize name="X" pixelSize="{pixel}">1024</dimensionSize>\n'
        f'            <dimensionSize name="Y" pixelSize="{pixel}">1024</dimensionSize>\n'
        f'            <dimensionSize name="Z" pixelSize="0.3">{z}</dimensionSize>\n'
        "        </sequenceSize>"
        for side, pixel, z in (("source", 0.1, z_slices[0]), ("target", 0.01, z_slices[1]))
    )
    return (
        "<root>\n"
        + ec_clem_matrix_element(matrix)
        + '\n    <transformation date="2020-03-12T14:05:31.230+01:00[Europe/Paris]" noiseModel="ISOTROPIC"'
        + ' type="AFFINE">\n'
        + sizes
        + '\n        <sequenceFileName type="source">/data/clemLM.tif</sequenceFileName>'
        + '\n        <sequenceFileName type="target">/data/clemEM.tif</sequenceFileName>'
        + "\n    </transformation>\n</root>\n"
    )


def test_ec_clem_schema_gives_micrometre_landmarks_in_2d() -> None:
    target = (LIFTED_2D @ np.c_[EC_CLEM_SOURCE, np.ones(4)].T).T[:, :3]
    result = parse_ec_clem_xml(ec_clem_schema(EC_CLEM_SOURCE, target))
    assert (result.format, result.matrix, result.dimensions, result.unit) == ("ec-clem", None, 2, "micrometer")
    pairs = result.landmarks
    assert isinstance(pairs, LandmarkPairs)
    assert (pairs.count, pairs.names, pairs.in_pixels, pairs.unit, pairs.dimensions) == (
        4,
        ("0", "1", "2", "3"),
        False,
        "micrometer",
        2,
    )
    np.testing.assert_array_equal(pairs.moving, EC_CLEM_SOURCE)
    np.testing.assert_allclose(pairs.reference, target)
    assert "4 point pairs" in result.notes and "2D" in result.notes and "AFFINE" in result.notes
    assert "source pixel 0.1 µm" in result.notes


def test_ec_clem_schema_pairs_by_dataset_type_and_keeps_3d() -> None:
    source = np.c_[EC_CLEM_SOURCE[:, :2], [0.0, 1.2, 2.4, 0.6]]
    target = source * 2 + 1
    text = ec_clem_schema(source, target).replace('pixelSize="1.0">1<', 'pixelSize="1.0">30<')
    swapped = text.replace('pointType="FIDUCIAL" type="source"', 'pointType="FIDUCIAL" type="SRC"')
    result = parse_ec_clem_xml(text)
    assert result.dimensions == 3
    np.testing.assert_allclose(result.landmarks.moving, source)
    np.testing.assert_allclose(result.landmarks.reference, target)
    # Like XmlTransformationReader: if the first dataset is not "source", it is the target.
    reversed_result = parse_ec_clem_xml(swapped)
    np.testing.assert_allclose(reversed_result.landmarks.moving, target)


def test_ec_clem_transformation_xml_3d_matrix() -> None:
    result = parse_ec_clem_xml(ec_clem_transformation_xml(AFFINE_3D, (40, 120)))
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert (result.landmarks, result.dimensions, result.unit) == (None, 3, "micrometer")
    assert "eC-CLEM XML (v2, AFFINE)" in result.notes


def test_ec_clem_2d_matrix_3x3_and_flat_4x4() -> None:
    result = parse_ec_clem_xml(ec_clem_transformation_xml(AFFINE_2D, (1, 1)))
    np.testing.assert_array_equal(result.matrix, LIFTED_2D)
    assert result.dimensions == 2
    # A 3D affine fitted to z = 0 points leaves z degenerate: 2D images re-lift the in-plane part.
    degenerate = LIFTED_2D.copy()
    degenerate[2, 2] = 0.0
    result = parse_ec_clem_xml(ec_clem_transformation_xml(degenerate, (1, 1)))
    np.testing.assert_array_equal(result.matrix, LIFTED_2D)
    assert "z part of the matrix replaced by identity" in result.notes


def test_ec_clem_v1_composes_updates_in_pixels() -> None:
    # EasyCLEMv0 *_transfo.xml: TargetSize, then one MatrixTransformation per update (EasyCLEMv0.writeTransfo),
    # combined as T2 @ T1 by getCombinedTransfo (PerrineGilloteaux/ec-clem, easyclemv0/.../EasyCLEMv0.java).
    second = np.eye(4)
    second[:2, 3] = [3.0, -4.0]
    text = (
        "<root>\n"
        '    <TargetSize height="941" sx="0.185405" sy="0.185405" sz="1.0" width="1024"/>\n'
        + ec_clem_matrix_element(LIFTED_2D, order="3")
        + "\n"
        + ec_clem_matrix_element(second, order="4")
        + "\n</root>\n"
    )
    result = parse_ec_clem_xml(text)
    np.testing.assert_allclose(result.matrix, second @ LIFTED_2D)
    assert (result.unit, result.dimensions) == ("pixel", 2)
    assert "2 matrices composed in order" in result.notes and "matrix in pixels" in result.notes


def test_ec_clem_v1_3d_is_in_micrometres() -> None:
    text = (
        '<root>\n    <TargetSize height="512" nz="60" sx="0.1" sy="0.1" sz="0.3" width="512"/>\n'
        + ec_clem_matrix_element(AFFINE_3D, formerpixelsizeX="0.2", formerpixelsizeY="0.2", formerpixelsizeZ="0.5")
        + "\n</root>"
    )
    result = parse_ec_clem_xml(text)
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert (result.unit, result.dimensions) == ("micrometer", 3)


def test_ec_clem_v1_non_rigid_point_pairs() -> None:
    # NonRigidTranformationVTK.SaveNonRigidTransform: transfoelements, then one element per pair.
    pairs = "\n".join(
        f'    <pointspairsinphysicalcoordinates pairnumber="{i}" xsource="{i + 1.5}" xtarget="{2 * i}"'
        f' ysource="{i * 3.0}" ytarget="{i + 7.0}" zsource="{i * 0.5}" ztarget="{1.0 + i}"/>'
        for i in range(5)
    )
    text = (
        '<root>\n    <transfoelements Npoints="5" extentx="100" extenty="100" extentz="10" ix="0.1" iy="0.1" iz="0.3"'
        ' process_date="Thu Mar 12 14:05:31 CET 2020" sx="0.1" sy="0.1" sz="0.3"/>\n' + pairs + "\n</root>"
    )
    result = parse_ec_clem_xml(text)
    assert result.matrix is None and result.dimensions == 3
    assert result.landmarks.names == ("0", "1", "2", "3", "4")
    np.testing.assert_allclose(result.landmarks.moving[2], [3.5, 6.0, 1.0])
    np.testing.assert_allclose(result.landmarks.reference[2], [4.0, 9.0, 3.0])
    assert result.landmarks.unit == "micrometer"


def test_ec_clem_accepts_an_xml_declaration() -> None:
    text = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n' + ec_clem_transformation_xml(AFFINE_3D, (5, 5))
    np.testing.assert_array_equal(parse_ec_clem_xml(text).matrix, AFFINE_3D)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<root><MatrixTransformation m00='1'></root>", r"malformed XML: mismatched tag: line 1"),
        ("not xml at all", r"malformed XML"),
        ("", r"empty file"),
        ('<!DOCTYPE r [<!ENTITY a "aaaa">]><root>&a;</root>', r"DOCTYPE or ENTITY declaration is not accepted"),
        ("<root><TargetSize width='3'/></root>", r"no MatrixTransformation, fiducial dataset or point pair"),
        ("<root><MatrixTransformation m00='1' m01='0' m02='0' m10='0' m11='1' m20='0' m21='0' m22='1'/></root>",
         r"MatrixTransformation 1 has no attribute m12"),
        ("<root><MatrixTransformation m00='1' m01='0' m02='x' m10='0' m11='1' m12='0' m20='0' m21='0' m22='1'/>"
         "</root>", r"MatrixTransformation 1, attribute m02: 'x' is not a number"),
        ("<root><MatrixTransformation m00='1' m01='0' m02='NaN' m10='0' m11='1' m12='0' m20='0' m21='0' m22='1'/>"
         "</root>", r"attribute m02: 'NaN' is not finite"),
        ("<root><MatrixTransformation m00='1' m01='0' m02='0' m10='0' m11='1' m12='0' m20='0' m21='1' m22='1'/>"
         "</root>", r"row 2 of a 3x3 homogeneous matrix must be 0 0 1"),
    ],
)  # fmt: skip
def test_ec_clem_rejects(text: str, match: str) -> None:
    rejects(parse_ec_clem_xml, text, match=match)


def test_ec_clem_rejects_bad_datasets() -> None:
    good = ec_clem_schema(EC_CLEM_SOURCE, EC_CLEM_SOURCE + 1)
    point = (
        '            <point id="3">\n                <coordinate dimension="0">3.5</coordinate>\n'
        '                <coordinate dimension="1">18.0</coordinate>\n'
        '                <coordinate dimension="2">0.0</coordinate>\n            </point>'
    )
    assert good.count(point) == 1
    rejects(parse_ec_clem_xml, good.replace(point, ""), match=r"source dataset says n='4' but has 3 points")
    fewer = good.replace(point, "").replace(
        'n="4" pointType="FIDUCIAL" type="source"', 'pointType="FIDUCIAL" type="source"'
    )
    rejects(parse_ec_clem_xml, fewer, match=r"source dataset has 3 points but the target dataset has 4")
    missing = good.replace('<coordinate dimension="1">18.0</coordinate>', "", 1)
    rejects(parse_ec_clem_xml, missing, match=r"source dataset point 4 has coordinates \[0, 2\], expected 0..2")
    rejects(parse_ec_clem_xml, good.replace(">18.0<", ">abc<", 1), match=r"source dataset point 4, coordinate: 'abc'")
    rejects(parse_ec_clem_xml, good.replace('dimension="2">0.0<', 'dimension="7">0.0<', 1), match=r"'7' is not 0, 1")


# BigWarp

# LandmarkTableModel.save (saalfeldlab/bigwarp, src/main/java/bigwarp/landmarks/LandmarkTableModel.java): opencsv
# CSVWriter quotes every cell; name, active, moving x y z, fixed x y z; unpaired points are Infinity.
BIGWARP_3D = """"Pt-0","true","10.5","20.25","3.0","110.5","220.25","33.0"
"Pt-1","false","1.0","2.0","3.0","4.0","5.0","6.0"
"Pt-2","true","-4.0E-4","7.0","0.5","1.0","2.0","3.0"
"Pt-3","true","Infinity","Infinity","Infinity","8.0","9.0","10.0"
"Pt-4","TRUE","1.0","1.0","1.0","2.0","2.0","2.0"
"""


def test_bigwarp_3d_skips_inactive_and_unpaired_rows() -> None:
    result = parse_bigwarp_csv(BIGWARP_3D)
    pairs = result.landmarks
    assert (result.format, result.matrix, result.dimensions, result.unit) == ("bigwarp", None, 3, None)
    assert pairs.names == ("Pt-0", "Pt-2", "Pt-4")
    assert (pairs.in_pixels, pairs.dimensions) == (False, 3)
    np.testing.assert_array_equal(pairs.moving[1], [-4.0e-4, 7.0, 0.5])
    np.testing.assert_array_equal(pairs.reference[0], [110.5, 220.25, 33.0])
    assert "3 active pairs" in result.notes and "1 inactive and 1 unpaired skipped" in result.notes


def test_bigwarp_2d_has_six_columns_and_zero_z() -> None:
    text = "\n".join(f'"Pt-{i}","true","{i}.5","{2 * i}.0","{i + 10}.0","{i - 3}.25"' for i in range(4))
    result = parse_bigwarp_csv(text)
    assert result.dimensions == 2 == result.landmarks.dimensions
    np.testing.assert_array_equal(result.landmarks.moving[1], [1.5, 2.0, 0.0])
    np.testing.assert_array_equal(result.landmarks.reference[3], [13.0, 0.25, 0.0])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('"Pt-0","true","1","2","3","4","5"\n', r"line 1 has 7 columns; BigWarp landmark rows have 6 \(2D\) or 8"),
        ('"Pt-0","true","1","2","3","4"\n"Pt-1","true","1","2","3","4","5","6"\n', r"line 2 has 8 columns but"),
        ('"Pt-0","true","1","2","x","4"\n', r"line 1, column 5: 'x' is not a number"),
        ('"Pt-0","true","1","2","NaN","4"\n', r"line 1, column 5: 'NaN' is not finite"),
        ('"Pt-0","yes","1","2","3","4"\n', r"line 1: active flag 'yes' is neither true nor false"),
        ('"Pt-0","false","1","2","3","4"\n', r"no active, paired landmarks among 1 rows"),
        ("", r"no landmark rows"),
        ('"Pt-0","true","1\0","2","3","4"\n', r"not readable as CSV|is not a number"),
    ],
)
def test_bigwarp_rejects(text: str, match: str) -> None:
    rejects(parse_bigwarp_csv, text, match=match)


# 3DCT point lists (real files)


def test_3dct_lm_and_sem_pair_eleven_ids_in_2d() -> None:
    result = parse_point_lists(threedct("LM_coordinates.txt"), threedct("SEM_coordinates.txt"))
    pairs = result.landmarks
    assert pairs.names == ("1", "2", "3", "4", "5", "6", "7", "9", "10", "11", "12")
    assert (result.format, result.matrix, result.dimensions, pairs.in_pixels, pairs.unit) == (
        "point-lists",
        None,
        2,
        True,
        None,
    )
    # X Y Z columns (not the XM YM ZM ones), z dropped because the SEM list has Z = 1 everywhere
    np.testing.assert_array_equal(pairs.moving[0], [354.862, 766.661, 0.0])
    np.testing.assert_array_equal(pairs.reference[7], [862.25, 494.25, 0.0])
    assert "11 pairs by id" in result.notes and "reference Z constant" in result.notes


def test_3dct_lm_and_fib_pair_nine_ids() -> None:
    result = parse_point_lists(threedct("LM_coordinates4FIB.txt"), threedct("FIB_coordinates.txt"))
    assert result.landmarks.names == ("1", "2", "3", "4", "5", "7", "9", "10", "11")
    assert result.dimensions == 2
    np.testing.assert_array_equal(result.landmarks.reference[-1], [1004.167, 412.5, 0.0])


def test_3dct_ids_in_one_list_only_are_reported() -> None:
    result = parse_point_lists(threedct("LM_coordinates.txt"), threedct("FIB_coordinates.txt"))
    assert result.landmarks.count == 9
    assert "ids only in the moving list: 6 12" in result.notes


def test_3dct_headerless_lists_pair_by_row_order() -> None:
    result = parse_point_lists(threedct("LM_for_FIB_woh.txt"), threedct("FIB_woh.txt"))
    assert result.landmarks.count == 9 and result.dimensions == 2
    assert "by row order" in result.notes
    np.testing.assert_array_equal(result.landmarks.moving[6], [1196.78, 563.697, 0.0])
    np.testing.assert_array_equal(result.landmarks.reference[6], [948.167, 447.333, 0.0])
    same = parse_point_lists(threedct("LM_coordinates4FIB.txt"), threedct("FIB_coordinates.txt"))
    np.testing.assert_array_equal(result.landmarks.moving, same.landmarks.moving)
    np.testing.assert_array_equal(result.landmarks.reference, same.landmarks.reference)


def test_3dct_files_dispatch_as_point_lists() -> None:
    text = threedct("FIB_woh.txt")
    assert detect_format("FIB_woh.txt", text) == "point-lists"
    assert detect_format("SEM_coordinates.txt", threedct("SEM_coordinates.txt")) == "point-lists"
    # LM_coordinates4FIB.txt has ids, FIB_woh.txt none: paired by row order, named by the LM ids.
    result = parse_transform_file("LM_coordinates4FIB.txt", threedct("LM_coordinates4FIB.txt"), reference_text=text)
    assert result.landmarks.names == ("1", "2", "3", "4", "5", "7", "9", "10", "11")
    rejects(parse_transform_file, "FIB_woh.txt", text, match=r"^FIB_woh.txt: .*need the matching reference list")


# Point lists (synthetic)


def test_point_lists_3d_with_header_ids_and_custom_order() -> None:
    moving = "id\tX\tY\tZ\n# clicked\n3\t1\t2\t3\n1\t4\t5\t6\n2\t7\t8\t10\n"
    reference = "Z Y X id\n6.5 5.5 4.5 1\n3.5 2.5 1.5 3\n9 8 7 2\n"
    result = parse_point_lists(moving, reference)
    assert result.dimensions == 3 and result.landmarks.names == ("3", "1", "2")
    np.testing.assert_array_equal(result.landmarks.moving[0], [1, 2, 3])
    np.testing.assert_array_equal(result.landmarks.reference[0], [1.5, 2.5, 3.5])


def test_point_lists_2d_columns_and_numeric_ids() -> None:
    moving = "1 10 20 0\n2 30 40 0\n03 50 60 0\n"
    reference = "x y\n1 2\n3 4\n5 6\n"
    result = parse_point_lists(moving, reference)
    assert result.dimensions == 2 and result.landmarks.names == ("1", "2", "3")
    assert "ids of the moving list used as names" in result.notes


@pytest.mark.parametrize(
    ("moving", "reference", "match"),
    [
        ("1 2 3\n4 5 6\n7 8 9\n", "1 2 3\n4 5 6\n", r"moving list has 3 points and the reference list 2"),
        ("1 2\n3 4\n", "1 2\n3 4\n", r"only 2 point pairs \(need at least 3\)"),
        ("id x y\n1 1 2\n2 3 4\n3 5 6\n", "id x y\n1 1 2\n2 3 4\n9 5 6\n", r"only 2 ids are in both lists"),
        ("1 2 3\n4 5\n", "1 2 3\n4 5 6\n", r"moving list line 2 has 2 columns but line 1 has 3"),
        ("x y z\n1 2 3\n4 five 6\n7 8 9\n", "1 2 3\n4 5 6\n7 8 9\n", r"moving list line 3, column 2: 'five'"),
        ("1 2 3\n4 5 6\n7 8 9\n", "1 2 3\n4 5 inf\n7 8 9\n", r"reference list line 2, column 3: 'inf' is not"),
        ("id x y\n1 1 2\n1 3 4\n2 5 6\n", "1 2\n3 4\n5 6\n", r"moving list line 3: id 1 appears twice \(also line 2\)"),
        ("a b c d e\n1 2 3\n", "1 2\n3 4\n5 6\n", r"moving list line 1: the header names 5 columns but rows have 3"),
        ("1\n2\n3\n", "1 2\n3 4\n5 6\n", r"needs at least x and y columns"),
        ("# only comments\n", "1 2\n3 4\n5 6\n", r"moving list: no coordinates found"),
    ],
)
def test_point_lists_reject(moving: str, reference: str, match: str) -> None:
    rejects(parse_point_lists, moving, reference, match=match)


# Dispatch


@pytest.mark.parametrize(
    ("filename", "text", "expected"),
    [
        ("t.xml", "<root/>", "ec-clem"),
        ("landmarks.csv", BIGWARP_3D, "bigwarp"),
        ("matrix.csv", "1,0,0\n0,1,0\n0,0,1\n", "matrix-csv"),
        ("view.json", json.dumps({"views": {"v": {"sourceTransforms": [affine(PARAMETERS, ["a"])]}}}), "mobie"),
        ("affine.json", json.dumps(PARAMETERS), "mobie"),
        ("matrix.json", json.dumps({"matrix": AFFINE_3D.tolist()}), "matrix-json"),
        ("matrix.json", "[[1, 0, 0], [0, 1, 0]]", "matrix-json"),
        ("broken.json", "[[1, 0", "matrix-json"),
        ("bdv.txt", " ".join(map(str, PARAMETERS)), "mobie"),
        ("matrix.txt", "1 0 0 5\n0 1 0 6\n0 0 1 7\n0 0 0 1\n", "matrix-csv"),
        ("points.txt", "1 2 3\n4 5 6\n7 8 9\n10 11 12\n", "point-lists"),
        ("noextension", "<root/>", "ec-clem"),
        ("noextension", BIGWARP_3D, "bigwarp"),
        ("noextension", json.dumps({"matrix": [[1, 0, 0], [0, 1, 0]]}), "matrix-json"),
        ("noextension", "[[1, 0, 0], [0, 1, 0]]", "matrix-json"),
    ],
)
def test_detect_format(filename: str, text: str, expected: str) -> None:
    assert detect_format(filename, text) == expected


def test_parse_transform_file_dispatches_and_names_the_file_in_errors() -> None:
    assert parse_transform_file("a/b/view.json", json.dumps(PARAMETERS)).format == "mobie"
    assert parse_transform_file("landmarks.csv", BIGWARP_3D).format == "bigwarp"
    assert parse_transform_file("m.csv", "1,0,0\n0,1,0\n").format == "matrix-csv"
    xml = ec_clem_transformation_xml(AFFINE_3D, (3, 3))
    assert parse_transform_file("x_to_y.transformation.xml", xml).format == "ec-clem"
    with pytest.raises(InvalidTransform, match=r"^m.json: row 1, column 3: 'x' is not a number$") as caught:
        parse_transform_file("dir/m.json", '[[1, 0, "x"]]')
    assert isinstance(caught.value, ValueError)
    rejects(parse_transform_file, "bad.xml", "<root>", match=r"^bad.xml: malformed XML")


# Exports


def test_matrix_json_round_trips() -> None:
    data = matrix_json(AFFINE_3D, "nm")
    assert data == {"matrix": AFFINE_3D.tolist(), "unit": "nanometer", "convention": CONVENTION}
    result = parse_matrix_json(json.dumps(data))
    np.testing.assert_array_equal(result.matrix, AFFINE_3D)
    assert result.unit == "nanometer"
    np.testing.assert_array_equal(parse_matrix_json(json.dumps(matrix_json(AFFINE_2D, "µm"))).matrix, LIFTED_2D)


def test_mobie_view_round_trips_with_unit_scale() -> None:
    data = mobie_view("lamella-em", "em", AFFINE_3D, unit_scale=1e-3)
    view = data["views"]["lamella-em"]
    assert view["isExclusive"] is False and view["uiSelectionGroup"]
    assert view["sourceDisplays"][0]["imageDisplay"]["sources"] == ["em"]
    transform = view["sourceTransforms"][0]["affine"]
    assert transform["sources"] == ["em"] and len(transform["parameters"]) == 12
    result = parse_mobie(json.dumps(data))
    expected = AFFINE_3D.copy()
    expected[:3, 3] *= 1e-3
    np.testing.assert_allclose(result.matrix, expected, rtol=0, atol=1e-15)
    assert parse_transform_file("views.json", json.dumps(data)).format == "mobie"
    display = {
        "imageDisplay": {"name": "em", "sources": ["em"], "color": "red", "contrastLimits": [0, 9], "opacity": 1}
    }
    custom = mobie_view("v", "em", LIFTED_2D, display=display)
    assert custom["views"]["v"]["sourceDisplays"] == [display]
    assert custom["views"]["v"]["sourceDisplays"][0] is not display


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mobie_view("v", "em", np.full((4, 4), np.nan)), r"non-finite"),
        (lambda: mobie_view("v", "em", np.eye(2)), r"2x2"),
        (lambda: mobie_view("v", "em", AFFINE_2D[[0, 1, 1]]), r"must be 0 0 1"),
        (lambda: mobie_view("v", "my source", np.eye(4)), r"MoBIE source names cannot"),
        (lambda: mobie_view("", "em", np.eye(4)), r"needs a name"),
        (lambda: mobie_view("v", "em", np.eye(4), unit_scale=0), r"unit_scale must be a positive"),
        (lambda: mobie_view("v", "em", np.eye(4), unit_scale=float("inf")), r"unit_scale must be a positive"),
        (lambda: mobie_view("v", "em", np.eye(4), unit_scale="x"), r"unit_scale must be a positive"),
        (lambda: mobie_view("v", "em", np.eye(4), display=["x"]), r"display must be"),
        (lambda: matrix_json(np.eye(4), "parsec"), r"unknown unit 'parsec'"),
        (lambda: matrix_json([["a"]], "nm"), r"array of numbers"),
    ],
)
def test_exports_reject(call, match: str) -> None:
    rejects(call, match=match)


# Robustness


def test_huge_integers_and_bracketed_numbers() -> None:
    rejects(
        parse_matrix_json, "[[" + "1" * 5000 + ", 0, 0], [0, 1, 0]]", match=r"row 1, column 1: 'Infinity' is not finite"
    )
    assert detect_format("a.json", "[" + "1" * 5000 + "]") == "matrix-json"
    np.testing.assert_array_equal(parse_mobie("[" + " ".join(map(str, PARAMETERS)) + "]").matrix, AFFINE_3D)
    np.testing.assert_array_equal(parse_mobie(json.dumps(affine(PARAMETERS, ["em"]))).matrix, AFFINE_3D)


def test_truncated_files_raise_only_invalid_transform() -> None:
    fixtures = [
        (parse_matrix_json, json.dumps({"matrix": AFFINE_3D.tolist(), "unit": "nm"})),
        (parse_matrix_csv, "1 0 0 5\n0 1 0 6\n0 0 1 7\n0 0 0 1\n"),
        (parse_mobie, json.dumps(mobie_view("v", "em", AFFINE_3D))),
        (parse_ec_clem_xml, ec_clem_schema(EC_CLEM_SOURCE, EC_CLEM_SOURCE + 1)),
        (parse_ec_clem_xml, ec_clem_transformation_xml(AFFINE_3D, (3, 3))),
        (parse_bigwarp_csv, BIGWARP_3D),
        (lambda text: parse_point_lists(text, text), "id x y z\n1 1 2 3\n2 4 5 6\n3 7 8 10\n"),
    ]
    for parse, text in fixtures:
        for end in range(0, len(text), 3):
            try:
                parse(text[:end])
            except InvalidTransform as error:
                assert "\n" not in str(error)


# Result types


def test_result_types_check_their_fields() -> None:
    pairs = LandmarkPairs(np.zeros((2, 3)), np.ones((2, 3)), ("a", "b"), True, None, 2)
    assert pairs.moving.dtype == np.float64 and not pairs.reference.flags.writeable
    with pytest.raises(InvalidTransform, match="2 moving landmarks but 3 reference"):
        LandmarkPairs(np.zeros((2, 3)), np.zeros((3, 3)), ("a", "b"), True, None, 3)
    with pytest.raises(InvalidTransform, match="shape"):
        LandmarkPairs(np.zeros((2, 2)), np.zeros((2, 2)), ("a", "b"), True, None, 2)
    with pytest.raises(InvalidTransform, match="matrix, landmarks or both"):
        ImportedTransform("mobie", None, None, None, 3, "")
    with pytest.raises(InvalidTransform, match="unknown transform format"):
        ImportedTransform("itk", np.eye(4), None, None, 3, "")
