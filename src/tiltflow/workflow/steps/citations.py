"""The published methods the steps implement, one short citation each (with its DOI where one was
confirmed), so a step declares ``methods=(WARP, CTFFIND4)`` and ``tiltflow show RUN`` lists them —
what to cite for a run, as Scipion's ``_methods`` does."""

WARP = "Warp: Tegunov & Cramer 2019, Nat Methods 16:1146, doi:10.1038/s41592-019-0580-y"
CTFFIND4 = "CTFFIND4: Rohou & Grigorieff 2015, J Struct Biol 192:216, doi:10.1016/j.jsb.2015.08.008"
EXPOSURE_FILTER = "Exposure filter: Grant & Grigorieff 2015, eLife, doi:10.7554/eLife.06980"
IMOD = "IMOD: Kremer, Mastronarde & McIntosh 1996, J Struct Biol 116:71, doi:10.1006/jsbi.1996.0013"
IMOD_AUTOMATED = (
    "IMOD tiltalign, automated alignment and reconstruction: Mastronarde & Held 2017, "
    "J Struct Biol 197:102, doi:10.1016/j.jsb.2016.07.011"
)
CCDERASER = "IMOD ccderaser (X-ray and bead erasing): bio3d.colorado.edu/imod/doc/man/ccderaser.html"
NEWSTACK = "IMOD newstack (binning, scaling, storage mode): bio3d.colorado.edu/imod/doc/man/newstack.html"
CTFPHASEFLIP = (
    "IMOD ctfphaseflip (strip-based phase flipping): Xiong et al. 2009, J Struct Biol, doi:10.1016/j.jsb.2009.08.016"
)
ARETOMO = "AreTomo: Zheng et al. 2022, J Struct Biol X, doi:10.1016/j.yjsbx.2022.100068"
WBP = "Weighted back-projection: Radermacher, in Electron Tomography (Frank, ed.) 2006, doi:10.1007/978-0-387-69008-7_9"
SIRT = "SIRT: Gilbert 1972, J Theor Biol, doi:10.1016/0022-5193(72)90180-4"
TOMO3D = "tomo3d: Agulleiro & Fernandez 2011, Bioinformatics 27:582, doi:10.1093/bioinformatics/btq692"
SERIALEM = "SerialEM (mdoc files): Mastronarde 2005, J Struct Biol 152:36, doi:10.1016/j.jsb.2005.07.007"
SCIPION_TOMO = (
    "ScipionTomo (sets of tilt series, protocols): Jiménez de la Morena et al. 2022, "
    "J Struct Biol 214:107872, doi:10.1016/j.jsb.2022.107872"
)
